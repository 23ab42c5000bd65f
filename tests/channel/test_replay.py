"""Replaying a stored message in place, on SQLite and PostgreSQL: same id, attempts kept, applied once."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from functools import partial

import pytest
from sqlalchemy import func, select

from engine.audit import Actor
from engine.channel.persist import Persister
from engine.channel.prepare import Preparer
from engine.channel.replay import Replayed, attempts, replay_message
from engine.channel.runner import ChannelRunner
from engine.cli.queries import channel_status, message_detail
from engine.config.models import ChannelConfig
from engine.errors import ErrorLocation, HL7ApplicationError
from engine.handlers import Outbound
from engine.store.database import Database
from engine.store.schema import audit_events, message_attempts, messages, outbox

ORM = ("MSH|^~\\&|RIS|HOSP|RB|RAD|20261122083000||ORM^O01|{cid}|P|2.5.1\r"
       "PID|1||MRN1^^^HOSP||DOE^JANE||19700101|F\rORC|NW|P1\rOBR|1|P1||CT^CT HEAD" + "|" * 14 + "ACC1\r")
ANALYST = Actor("analyst", 1000, "ws1", 4242, "/dev/pts/3", "analyst")


class Table:
    """A handler that refuses the order until its code table "knows" the code; each success emits once."""

    name = "table"

    def __init__(self, knows: bool = False, seconds: float = 0.0) -> None:
        self.knows = knows
        self.seconds = seconds

    def apply(self, conn, ctx):
        time.sleep(self.seconds)
        if not self.knows:
            raise HL7ApplicationError(103, "unknown procedure code CT", ErrorLocation("OBR", 1, 4))
        return [Outbound("ris", b"MSH|status", "application/hl7-v2", "MRN1")]


def make_runner(db: Database, handler: Table, **channel) -> ChannelRunner:
    cfg = ChannelConfig.model_validate({"name": "c", "source": {"type": "mllp", "port": 0}, **channel})
    return ChannelRunner(cfg, Preparer(cfg), Persister(cfg, [handler], "RB", "RAD"), db)


def receive(r: ChannelRunner, cid: str = "C1", peer: str = "10.1.2.3:4000") -> bytes:
    return asyncio.run(r.receive(ORM.format(cid=cid).encode(), peer))


def replay(db: Database, r: ChannelRunner | None, message_id: int = 1) -> Replayed | None:
    return db.writer.call(partial(replay_message, message_id=message_id, runner_of=lambda name: r,
                                  actor=ANALYST, now=datetime.now(UTC)))


def count(db: Database, table) -> int:
    return db.read(lambda c: c.execute(select(func.count()).select_from(table)).scalar_one())


def row(db: Database, message_id: int = 1):
    return db.read(lambda c: c.execute(select(messages).where(messages.c.id == message_id)).one())


def test_a_fixed_message_is_reprocessed_in_place_with_both_attempts_kept(db):
    handler = Table()
    r = make_runner(db, handler)
    receive(r)
    handler.knows = True

    done = replay(db, r)

    assert done == Replayed(1, "ERROR", "PROCESSED", "AA", attempt=2)
    assert count(db, messages) == 1 and count(db, outbox) == 1
    stored = row(db)
    assert (stored.status, stored.ack_code, stored.error_code, stored.error) == ("PROCESSED", "AA", None, "")
    assert "MSA|AA|C1" in stored.ack and stored.peer == "10.1.2.3:4000"
    tried = db.read(lambda c: attempts(c, stored))
    assert [(a["attempt"], a["via"], a["actor"], a["status"], a["ack_code"], a["error_code"], a["error"])
            for a in tried] == [(1, "receive", "peer 10.1.2.3:4000", "ERROR", "AE", 103, "unknown procedure code CT"),
                                (2, "replay", "analyst", "PROCESSED", "AA", None, "")]
    assert tried[0]["at"] == stored.received_at and tried[1]["at"] > stored.received_at


def test_the_replay_is_audited_with_its_actor_in_the_same_transaction(db):
    handler = Table()
    r = make_runner(db, handler)
    receive(r)
    handler.knows = True
    replay(db, r)
    event = db.read(lambda c: c.execute(select(audit_events)).one())
    assert (event.actor, event.action, event.object_type, event.object_id) == ("analyst", "message.replay",
                                                                               "message", "1")
    assert '"after": "PROCESSED"' in event.detail and '"tty": "/dev/pts/3"' in event.detail


def test_replaying_twice_applies_the_message_once(db):
    handler = Table()
    r = make_runner(db, handler)
    receive(r)
    handler.knows = True
    replay(db, r)

    again = replay(db, r)

    assert again == Replayed(1, "PROCESSED", "PROCESSED", "AA")
    assert count(db, outbox) == 1 and count(db, message_attempts) == 2


def test_a_replay_that_does_not_commit_changes_nothing_and_can_be_run_again(db):
    """A crash before the commit: the effect, the state and the attempt go together or not at all."""
    handler = Table()
    r = make_runner(db, handler)
    receive(r)
    handler.knows = True

    class Crash(Exception):
        pass

    def crashing(conn):
        replay_message(conn, 1, lambda name: r, ANALYST, datetime.now(UTC))
        raise Crash

    with pytest.raises(Crash):
        db.writer.call(crashing)
    assert row(db).status == "ERROR"
    assert (count(db, outbox), count(db, message_attempts), count(db, audit_events)) == (0, 0, 0)

    assert replay(db, r).after == "PROCESSED"
    assert count(db, outbox) == 1


def test_two_replays_at_once_apply_the_message_once(db):
    handler = Table()
    r = make_runner(db, handler)
    receive(r)
    handler.knows, handler.seconds = True, 0.5
    other = Database(db.url)
    try:
        results: list[Replayed | None] = []
        threads = [threading.Thread(target=lambda d=d: results.append(replay(d, r))) for d in (db, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.close()
    assert sorted(x.attempt for x in results if x) == [0, 2]
    assert count(db, outbox) == 1 and count(db, message_attempts) == 2


def test_a_replay_that_fails_again_keeps_the_message_in_error_with_a_new_attempt(db):
    r = make_runner(db, Table())
    receive(r)

    done = replay(db, r)

    assert done == Replayed(1, "ERROR", "ERROR", "AE", attempt=2) and not done.accepted
    assert row(db).status == "ERROR" and count(db, message_attempts) == 2
    assert replay(db, r).attempt == 3


def test_a_message_another_copy_applied_since_is_not_applied_again(db):
    handler = Table()
    r = make_runner(db, handler)
    receive(r)                              # message 1: ERROR
    receive(r, peer="10.1.2.3:4001")         # the sender's resend, message 2: ERROR too (not a duplicate of an error)
    handler.knows = True
    assert replay(db, r, 2).after == "PROCESSED"

    done = replay(db, r, 1)

    assert (done.after, done.ack_code) == ("UNCHANGED", "AA")
    assert count(db, outbox) == 1
    first = row(db, 1)
    assert first.ack == row(db, 2).ack and "message 2, which applied it" in first.note


def test_a_fragment_of_a_refused_frame_is_not_replayed(db):
    r = make_runner(db, Table(knows=True), source={"type": "mllp", "port": 0, "max_message_bytes": 1024})
    asyncio.run(r.keep(b"MSH|^~\\&|RIS|HOSP", "p", "connection closed inside an MLLP frame"))
    asyncio.run(r.reject_oversize(ORM.format(cid="BIG").encode() * 20, "p"))

    junk, oversize = replay(db, r, 1), replay(db, r, 2)

    assert junk.refused.startswith("the stored bytes are not a message")
    assert oversize.refused.startswith("the stored bytes are the first bytes of an oversize frame")
    assert [row(db, n).status for n in (1, 2)] == ["REJECTED", "REJECTED"] and count(db, outbox) == 0


def test_a_channel_no_longer_configured_is_said(db):
    r = make_runner(db, Table())
    receive(r)
    assert replay(db, None).refused == "channel 'c' is no longer configured"
    assert count(db, message_attempts) == 0


def test_a_rejected_message_is_replayed_once_the_channel_accepts_its_type(db):
    refusing = make_runner(db, Table(knows=True), accept={"message_types": ["ADT^*"]})
    receive(refusing)
    assert row(db).status == "REJECTED"

    done = replay(db, make_runner(db, Table(knows=True)))

    assert (done.before, done.after, done.ack_code) == ("REJECTED", "PROCESSED", "AA")
    assert row(db).error_code is None


def test_status_counts_follow_the_replay(db):
    handler = Table()
    r = make_runner(db, handler)
    receive(r)
    assert db.read(channel_status)["c"]["errors"] == 1
    handler.knows = True
    replay(db, r)
    counts = db.read(channel_status)["c"]
    assert (counts["received"], counts["errors"], counts["queued"]) == (1, 0, 1)


def test_show_lists_the_receipt_as_the_only_attempt_before_any_replay(db):
    receive(make_runner(db, Table()))
    detail = db.read(lambda c: message_detail(c, 1))
    assert [(a["attempt"], a["via"], a["status"]) for a in detail["attempts"]] == [(1, "receive", "ERROR")]
    assert isinstance(detail["attempts"][0]["at"], str)


def test_deleting_a_message_deletes_its_attempts(db):
    handler = Table()
    r = make_runner(db, handler)
    receive(r)
    replay(db, r)
    db.writer.call(lambda c: c.execute(outbox.delete()))
    db.writer.call(lambda c: c.execute(messages.delete()))
    assert count(db, message_attempts) == 0
