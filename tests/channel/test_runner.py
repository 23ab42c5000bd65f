"""The channel pipeline in process, on SQLite and PostgreSQL: what is stored and answered."""

import asyncio
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select, text

from engine.channel.persist import Persister
from engine.channel.prepare import Preparer
from engine.channel.runner import ChannelRunner
from engine.config.models import ChannelConfig
from engine.errors import ErrorLocation, HL7ApplicationError
from engine.handlers import Outbound
from engine.hl7.er7 import Message
from engine.store.schema import audit_events, messages, outbox

ORM = ("MSH|^~\\&|RIS|HOSP|RB|RAD|20261122083000||ORM^O01|{cid}|P|2.5.1\r"
       "PID|1||MRN{pid}^^^HOSP||DOE^JANE||19700101|F\rORC|NW|P1\rOBR|1|P1||CT^CT HEAD" + "|" * 14 + "ACC{cid}\r")


def msg(cid="C1", pid="1", **kw) -> bytes:
    return ORM.format(cid=cid, pid=pid).encode()


class AuditThenFail:
    name = "audit-then-fail"

    def apply(self, conn, ctx):
        conn.execute(insert(audit_events).values(at=datetime.now(UTC), actor="h", action="x", object_type="m",
                                                 object_id=str(ctx.message_id), detail=""))
        raise HL7ApplicationError(204, "unknown patient", ErrorLocation("PID", 1, 3))


class Emit:
    name = "emit"

    def apply(self, conn, ctx):
        return [Outbound("ris", b"MSH|status", "application/hl7-v2", "MRN1")]


def runner(db, handlers=(), **channel):
    cfg = ChannelConfig.model_validate({"name": "c", "source": {"type": "mllp", "port": 0}, **channel})
    return ChannelRunner(cfg, Preparer(cfg), Persister(cfg, list(handlers), "RB", "RAD"), db)


def answer(r, payload: bytes) -> Message:
    return Message(asyncio.run(r.receive(payload, "test")).decode("latin-1"))


def rows(db):
    return db.read(lambda c: c.execute(select(messages.c.status, messages.c.ack_code, messages.c.error_code,
                                              messages.c.patient_id, messages.c.accession_number)).all())


def test_accepted_message_is_stored_then_answered_aa(db):
    ack = answer(runner(db), msg())
    assert ack.segment("MSA").value(1) == "AA" and ack.segment("MSA").value(2) == "C1"
    assert [tuple(r) for r in rows(db)] == [("PROCESSED", "AA", None, "MRN1", "ACCC1")]


def test_rejected_message_is_kept_with_its_error(db):
    ack = answer(runner(db, accept={"message_types": ["ADT^*"]}), msg())
    assert ack.segment("MSA").value(1) == "AR"
    assert ack.segment("ERR").value(3) == "200"
    assert rows(db)[0][:3] == ("REJECTED", "AR", 200)


def test_filtered_message_is_answered_aa_and_marked(db):
    r = runner(db, filter={"conditions": [{"field": "OBR-24", "equals": "MR"}]})
    assert answer(r, msg()).segment("MSA").value(1) == "AA"
    assert rows(db)[0][0] == "FILTERED"


class Boom:
    name = "boom"

    def apply(self, conn, ctx):
        conn.execute(insert(audit_events).values(at=datetime.now(UTC), actor="h", action="x", object_type="m",
                                                 object_id=str(ctx.message_id), detail=""))
        raise RuntimeError("a bug in a handler")


@pytest.mark.parametrize("alone", [False, True], ids=["writer-thread", "inline"])
@pytest.mark.parametrize(("handler", "code", "error"), [(AuditThenFail, "AE", 204), (Boom, "AE", 207)],
                         ids=["hl7-error", "exception"])
def test_handler_error_rolls_back_its_changes_but_keeps_the_message(db, alone, handler, code, error):
    """Inline, the handlers run without their savepoint; a failure rolls the whole attempt back and
    the message is persisted again under the savepoint: the same row, ACK and (no) changes."""
    r = runner(db, [handler()])
    ack = Message(asyncio.run(r.receive(msg(), "test", alone=alone)).decode("latin-1"))
    assert ack.segment("MSA").value(1) == code and ack.segment("ERR").value(3) == str(error)
    if error == 204:
        assert ack.segment("ERR").value(2) == "PID"
    assert [r[:3] for r in rows(db)] == [("ERROR", code, error)]  # one row: the rolled-back attempt left none
    assert db.read(lambda c: c.execute(select(func.count()).select_from(audit_events)).scalar()) == 0
    if alone and db.is_sqlite:
        assert db.writer.inline_commits == 1  # the first attempt rolled back, the second committed


@pytest.mark.parametrize("alone", [False, True], ids=["writer-thread", "inline"])
def test_each_refused_message_is_one_warning_line_without_its_content(db, caplog, alone):
    """An AE or AR left no line in the log (new-user campaign: an order answered AE 103, the log silent; only
    ``status`` told). One WARNING per refused message, naming channel, id, control id and ERR code and
    location, never the message's content; AA logs nothing."""
    with caplog.at_level("INFO", logger="engine.channel.runner"):
        assert answer(runner(db, accept={"message_types": ["ADT^*"]}), msg("R1")).segment("MSA").value(1) == "AR"
        asyncio.run(runner(db, [AuditThenFail()]).receive(msg("E1", pid="77"), "test", alone=alone))
        answer(runner(db), msg("A1"))
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "engine.channel.runner"]
    assert lines == ["channel c: message 1 (control id R1) answered AR 200 at MSH^1^9^1: radbridge messages show 1",
                     "channel c: message 2 (control id E1) answered AE 204 at PID^1^3: radbridge messages show 2"]
    assert all(rec.levelname == "WARNING" for rec in caplog.records if rec.name == "engine.channel.runner")
    assert not any("MRN77" in line or "DOE" in line for line in lines)


class FailOn:
    """Writes an audit row for every message; fails (AE 204) the ones whose control id is in ``bad``."""

    name = "fail-on"

    def __init__(self, *bad: str) -> None:
        self.bad = bad

    def apply(self, conn, ctx):
        conn.execute(insert(audit_events).values(at=datetime.now(UTC), actor="h", action="x", object_type="m",
                                                 object_id=ctx.message.control_id, detail=""))
        if ctx.message.control_id in self.bad:
            raise HL7ApplicationError(204, "unknown patient", ErrorLocation("PID", 1, 3))
        return []


def test_handlers_run_without_a_savepoint_until_one_fails_then_with_it_for_a_while(tmp_path, monkeypatch):
    """Optimistic: a message's transaction is rolled back and run again with the savepoint only when
    its handlers fail; after a failure the channel keeps the savepoint (CAREFUL_SECONDS)."""
    import engine.channel.persist as persist
    from tests.conftest import migrated

    gen = migrated(f"sqlite:///{tmp_path / 'rb.db'}")
    db = next(gen)
    seen: list[str] = []
    raw = db.writer._connection().connection.dbapi_connection  # the writer's one connection
    raw.set_trace_callback(seen.append)
    r = runner(db, [FailOn("BAD")])
    clock = [1000.0]
    monkeypatch.setattr(persist, "_clock", lambda: clock[0])

    def savepoints(cid: str, alone: bool) -> int:
        seen.clear()
        asyncio.run(r.receive(msg(cid), "test", alone=alone))
        return sum("SAVEPOINT" in s for s in seen)

    try:
        assert savepoints("S1", alone=True) == 0  # inline
        assert savepoints("S2", alone=False) == 0  # the writer thread's group commit
        assert savepoints("BAD", alone=False) == 3  # rolled back, then SAVEPOINT, ROLLBACK TO, RELEASE
        assert savepoints("S3", alone=False) == 2  # careful now: SAVEPOINT, RELEASE
        clock[0] += persist.CAREFUL_SECONDS + 1
        assert savepoints("S4", alone=True) == 0
    finally:
        raw.set_trace_callback(None)
        gen.close()
    statuses = [tuple(row[:3]) for row in rows(db)]
    assert statuses == [("PROCESSED", "AA", None)] * 2 + [("ERROR", "AE", 204)] + [("PROCESSED", "AA", None)] * 2


@pytest.mark.parametrize("careful", [False, True], ids=["optimistic", "careful"])
def test_a_failing_message_in_a_group_commit_changes_nothing_and_overtakes_nobody(db, careful):
    """Messages submitted together share one transaction; one of them failing rolls the optimistic
    group back, and its messages are committed again one by one in their order."""
    r = runner(db, [FailOn("G2")])
    if careful:
        r.persister.careful_until = float("inf")
    batch = b"BHS|^~\\&|RIS\r" + msg("G1") + msg("G2", pid="2") + msg("G3", pid="3") + b"BTS|3\r"
    reply = asyncio.run(r.receive(batch, "t")).decode()
    assert [line.split("|")[1:3] for line in reply.split("\r") if line.startswith("MSA")] == [
        ["AA", "G1"], ["AE", "G2"], ["AA", "G3"]]
    stored = db.read(lambda c: c.execute(select(messages.c.control_id, messages.c.status)
                                         .order_by(messages.c.id)).all())
    assert [tuple(s) for s in stored] == [("G1", "PROCESSED"), ("G2", "ERROR"), ("G3", "PROCESSED")]
    audited = db.read(lambda c: c.execute(select(audit_events.c.object_id).order_by(audit_events.c.id)).scalars().all())
    assert audited == ["G1", "G3"]  # G2's handler work rolled back, the others' kept once


def test_handler_outbound_work_commits_with_the_message(db):
    answer(runner(db, [Emit()]), msg())
    queued = db.read(lambda c: c.execute(select(outbox.c.destination, outbox.c.ordering_key)).all())
    assert [tuple(q) for q in queued] == [("ris", "MRN1")]


def test_destinations_get_the_raw_message_keyed_by_patient(db):
    r = runner(db, destinations=[{"name": "d", "type": "mllp", "host": "127.0.0.1", "port": 9,
                                  "message_types": ["ORM^*"]}])
    raw = msg(pid="7")
    answer(r, raw)
    row = db.read(lambda c: c.execute(select(outbox.c.payload, outbox.c.ordering_key)).one())
    assert bytes(row.payload) == raw and row.ordering_key == "MRN7"


def test_resent_message_gets_the_original_ack_and_changes_nothing(db):
    r = runner(db)
    first = asyncio.run(r.receive(msg(), "a"))
    second = asyncio.run(r.receive(msg(), "a"))
    assert first == second
    assert len(rows(db)) == 1
    assert db.read(lambda c: c.execute(select(messages.c.duplicate_count)).scalar()) == 1


def test_reused_control_id_with_other_content_is_rejected_205(db):
    r = runner(db)
    answer(r, msg())
    ack = answer(r, msg(pid="2"))
    assert ack.segment("MSA").value(1) == "AE" and ack.segment("ERR").value(3) == "205"


def test_reused_control_id_may_be_accepted_by_policy(db):
    r = runner(db, duplicates={"on_conflict": "accept"})
    answer(r, msg())
    assert answer(r, msg(pid="2")).segment("MSA").value(1) == "AA"


def test_the_same_message_sent_to_two_channels_is_applied_by_each(db):
    """An HIS sending one ADT/order to two interfaces (e.g. ris-inbound and a forwarding channel):
    the second channel is not answered with the first one's ACK while doing nothing."""
    first, second = runner(db, [Emit()]), runner(db, [Emit()], name="other")
    assert answer(first, msg()).segment("MSA").value(1) == "AA"
    assert answer(second, msg()).segment("MSA").value(1) == "AA"
    assert answer(second, msg(pid="2")).segment("ERR").value(3) == "205"  # its own original still counts
    stored = db.read(lambda c: c.execute(select(messages.c.channel, messages.c.status, messages.c.duplicate_count)
                                         .order_by(messages.c.id)).all())
    assert [tuple(r) for r in stored] == [("c", "PROCESSED", 0), ("other", "PROCESSED", 0), ("other", "ERROR", 0)]
    assert db.read(lambda c: c.execute(select(func.count()).select_from(outbox)).scalar()) == 2


def test_batch_is_answered_with_a_batch_of_acks(db):
    batch = b"BHS|^~\\&|RIS\r" + msg("B1") + msg("B2") + b"BTS|2\r"
    reply = asyncio.run(runner(db).receive(batch, "t")).decode()
    assert reply.startswith("BHS|") and reply.count("MSA|AA|") == 2 and "BTS|2" in reply


@pytest.mark.parametrize("alone", [False, True], ids=["writer-thread", "inline"])
def test_store_failure_is_answered_ae_never_aa(db, alone):
    for table in ("outbox", "message_attempts", "messages"):  # the tables that refer to messages first
        db.writer.call(lambda c, table=table: c.execute(text(f"DROP TABLE {table}")))
    ack = Message(asyncio.run(runner(db).receive(msg(), "test", alone=alone)).decode("latin-1"))
    assert ack.segment("MSA").value(1) == "AE" and ack.segment("ERR").value(3) == "207"
    assert db.writer.inline_commits == 0


def test_a_message_alone_never_waits_for_a_lock_in_the_event_loop(tmp_path):
    """Another connection holds SQLite's write lock: the event loop does not wait for it (the
    inline attempt gives up at once), the writer thread waits instead, and the loop keeps running."""
    import sqlite3
    import threading
    import time

    from tests.conftest import migrated

    db = next(iter(migrated(f"sqlite:///{tmp_path / 'rb.db'}")))
    other = sqlite3.connect(tmp_path / "rb.db", isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(1.0, lambda: other.execute("COMMIT")).start()

        async def scenario() -> tuple[bytes, float]:
            gaps: list[float] = []

            async def ticker() -> None:
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            tick = asyncio.ensure_future(ticker())
            answer = await runner(db).receive(msg("LOCK1"), "test", alone=True)
            tick.cancel()
            return answer, max(gaps)

        answer, longest = asyncio.run(scenario())
        assert Message(answer.decode("latin-1")).segment("MSA").value(1) == "AA"
        assert longest < 0.5 and db.writer.inline_commits == 0
    finally:
        other.close()
        db.close()


def test_a_message_alone_is_committed_inline_on_sqlite_and_stored_like_any_other(db):
    r = runner(db)
    ack = Message(asyncio.run(r.receive(msg("IN1"), "test", alone=True)).decode("latin-1"))
    assert ack.segment("MSA").value(1) == "AA"
    assert db.writer.inline_commits == (1 if db.is_sqlite else 0)  # PostgreSQL: round trips, never on the loop
    duplicate = Message(asyncio.run(r.receive(msg("IN1"), "test", alone=True)).decode("latin-1"))
    assert duplicate.segment("MSA").value(1) == "AA"
    stored = db.read(lambda c: c.execute(select(messages.c.status, messages.c.control_id,
                                                messages.c.duplicate_count)).all())
    assert [tuple(r) for r in stored] == [("PROCESSED", "IN1", 1)]


def test_garbage_is_answered_ar_and_kept(db):
    ack = answer(runner(db), b"\x00\x01this is not HL7")
    assert ack.segment("MSA").value(1) == "AR"
    assert rows(db)[0][0] == "REJECTED"


def test_mapped_records_are_kept_with_the_message_even_with_undecodable_text(db):
    import json

    from engine.store.schema import messages

    records = [[{"record": "patient", "patient_name": "MÜLLER^ANNA", "birth": datetime(2026, 1, 1, tzinfo=UTC)}],
               [{"record": "patient", "patient_name": "bad \udcff byte"}]]
    cfg = ChannelConfig.model_validate({"name": "c", "source": {"type": "mllp", "port": 0}})
    feed = iter(records)
    r = ChannelRunner(cfg, Preparer(cfg, lambda m: next(feed)), Persister(cfg, [], "RB", "RAD"), db)
    assert answer(r, msg("C1")).segment("MSA").value(1) == "AA"
    assert answer(r, msg("C2")).segment("MSA").value(1) == "AA"
    stored = db.read(lambda c: c.execute(select(messages.c.mapped).order_by(messages.c.id)).scalars().all())
    first, second = (json.loads(content) for content in stored)
    assert first == [{"record": "patient", "patient_name": "MÜLLER^ANNA", "birth": "2026-01-01T00:00:00Z"}]
    assert second == [{"record": "patient", "patient_name": "bad \udcff byte"}]


def test_when_the_inline_attempt_cannot_start_the_writer_thread_takes_the_message(db, monkeypatch):
    import sqlite3
    import threading

    real = db.writer._connection

    def failing_in_the_loop():
        if threading.current_thread() is threading.main_thread():
            raise sqlite3.OperationalError("unable to open database file")
        return real()

    monkeypatch.setattr(db.writer, "_connection", failing_in_the_loop)
    ack = Message(asyncio.run(runner(db).receive(msg("FB1"), "test", alone=True)).decode("latin-1"))
    assert ack.segment("MSA").value(1) == "AA" and db.writer.inline_commits == 0


_EXAMPLE = iter(range(10**9))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.booleans(), min_size=1, max_size=8), st.booleans())
def test_any_mix_of_failing_messages_in_one_frame_stores_what_the_careful_path_stores(db, fails, careful):
    """Whatever fails where in a batch frame (its messages share group commits), each message is stored
    once, in order, with its own outcome, and only the succeeding ones' handler work is kept."""
    n = next(_EXAMPLE)
    cids = [f"X{n}-{i}" for i in range(len(fails))]
    r = runner(db, [FailOn(*(c for c, bad in zip(cids, fails, strict=True) if bad))])
    if careful:
        r.persister.careful_until = float("inf")
    frame = b"BHS|^~\\&|RIS\r" + b"".join(msg(c, pid=str(i)) for i, c in enumerate(cids)) + b"BTS|%d\r" % len(cids)
    reply = asyncio.run(r.receive(frame, "t")).decode()
    assert [line.split("|")[1:3] for line in reply.split("\r") if line.startswith("MSA")] == [
        ["AE" if bad else "AA", c] for c, bad in zip(cids, fails, strict=True)]
    stored = db.read(lambda c: c.execute(select(messages.c.control_id, messages.c.status)
                                         .where(messages.c.control_id.in_(cids)).order_by(messages.c.id)).all())
    expected = [(c, "ERROR" if bad else "PROCESSED") for c, bad in zip(cids, fails, strict=True)]
    assert [tuple(s) for s in stored] == expected
    audited = db.read(lambda c: c.execute(select(audit_events.c.object_id).where(audit_events.c.object_id.in_(cids))
                                          .order_by(audit_events.c.id)).scalars().all())
    assert audited == [c for c, bad in zip(cids, fails, strict=True) if not bad]
