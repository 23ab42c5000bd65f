"""``radbridge outbox replay``: a row that is not put back in the queue says why."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from engine.cli import outbox as outbox_cli
from engine.outbox.queue import enqueue
from engine.outbox.rows import ERROR
from engine.store.schema import outbox

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def _rows(db) -> tuple[int, int]:
    """A dead letter to pacs and a queued row to pacs: their ids."""
    def work(conn):
        ids = [enqueue(conn, channel="c", destination="pacs", payload=b"x", media_type="x", ordering_key="k",
                       now=NOW) for _ in range(2)]
        conn.execute(update(outbox).where(outbox.c.id == ids[0]).values(status=ERROR, last_error="refused"))
        return ids
    dead, queued = db.writer.call(work)
    return dead, queued


def _replay(db, ids, destination=None) -> int:
    return outbox_cli._cmd_replay(argparse.Namespace(ids=ids, destination=destination), db)


@pytest.fixture(autouse=True)
def _pacs_has_an_address(monkeypatch) -> None:
    monkeypatch.setattr(outbox_cli, "_targets", lambda args: {"pacs": "10.0.0.5:104", "ehr": "off"}, raising=False)


def test_ids_that_are_not_dead_letters_or_unknown_are_named_with_the_reason(db, capsys) -> None:
    _dead, queued = _rows(db)

    assert _replay(db, [queued, 999999]) == 1

    out, err = capsys.readouterr()
    assert out == "0 delivery(ies) re-queued\n"
    assert err.splitlines() == [
        f"{queued}: not a dead letter (QUEUED); only ERROR rows are put back in the queue",
        "999999: no such delivery"]


def test_a_dead_letter_of_another_destination_is_named_and_a_good_id_still_replays(db, capsys) -> None:
    dead, _queued = _rows(db)

    assert _replay(db, [dead], destination="ehr") == 1
    assert capsys.readouterr().err == f"{dead}: a delivery to pacs, not ehr\n"

    assert _replay(db, [dead]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("1 delivery(ies) re-queued\n", "")


def test_no_ids_and_no_destination_is_a_usage_error_on_stderr(db, capsys) -> None:
    assert _replay(db, []) == 2
    out, err = capsys.readouterr()
    assert out == "" and "name the row ids" in err and "--destination NAME" in err


def test_replaying_the_dead_letters_of_a_destination_that_is_off_says_they_will_wait(db, capsys, monkeypatch) -> None:
    """The PACS refused images, the engine was restarted without RADBRIDGE_PACS_HOST, the operator replayed them:
    "1 delivery(ies) re-queued" and nothing else; the rows stayed QUEUED for good (new-user campaign)."""
    dead, _queued = _rows(db)
    monkeypatch.setattr(outbox_cli, "_targets", lambda args: {"pacs": "off"}, raising=False)

    assert _replay(db, [dead]) == 0

    out, err = capsys.readouterr()
    assert out == "1 delivery(ies) re-queued\n"
    assert err == ("pacs: this destination is off (no address in the engine's configuration): its re-queued rows"
                   " wait until it is given one and the engine restarted\n")
