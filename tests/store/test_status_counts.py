"""``radbridge status`` counts from indexes, on both backends, and never reads the message rows on SQLite."""

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert

from engine.cli.queries import channel_status
from engine.store.database import Database
from engine.store.schema import messages


def _row(n: int, channel: str, status: str) -> dict[str, object]:
    return {
        "channel": channel, "received_at": datetime(2026, 12, 5, 8, 0, tzinfo=UTC), "peer": "", "status": status,
        "control_id": f"M{n}", "sender": "", "sending_application": "", "sending_facility": "",
        "message_type": "ORM^O01", "version": "2.5.1", "patient_id": "", "accession_number": "", "charset": "ascii",
        "body_hash": "h", "raw": b"MSH", "text": "MSH", "ack_code": "AA", "ack": "", "error_code": None,
        "error_location": "", "error": "", "duplicate_count": 0, "mapped": "",
    }  # fmt: skip


@pytest.fixture
def sqlite_db(tmp_path) -> Iterator[Database]:
    from tests.conftest import migrated

    yield from migrated(f"sqlite:///{tmp_path / 'rb.db'}")


def test_counts_per_channel_and_status(db) -> None:
    rows = [("a", "PROCESSED")] * 5 + [("a", "ERROR"), ("a", "REJECTED"), ("a", "FILTERED"), ("a", "FILTERED")]
    rows += [("b", "PROCESSED"), ("b", "REJECTED"), ("c", "FILTERED"), ("c", "UNCHANGED")]
    db.writer.call(lambda c: c.execute(insert(messages), [_row(n, ch, st) for n, (ch, st) in enumerate(rows)]))
    status = db.read(channel_status)
    assert {ch: (s["received"], s["errors"], s["filtered"], s["unchanged"]) for ch, s in status.items()} == {
        "a": (9, 2, 2, 0), "b": (2, 1, 0, 0), "c": (2, 0, 1, 1)}


def test_the_counts_use_covering_indexes_on_sqlite(sqlite_db: Database) -> None:
    """A full pass over the message rows took ~10 s with a cold cache at 300,000 messages."""
    db = sqlite_db
    statements: list[str] = []

    def capture(conn):
        conn.connection.dbapi_connection.set_trace_callback(statements.append)
        try:
            return channel_status(conn)
        finally:
            conn.connection.dbapi_connection.set_trace_callback(None)

    db.writer.call(lambda c: c.execute(insert(messages), [_row(1, "a", "ERROR"), _row(2, "a", "PROCESSED")]))
    db.read(capture)
    counts = [s for s in statements if "FROM messages" in s]
    # received, unprocessed, acknowledged AE/AR, the newest unacknowledged AE/AR per channel, then those rows by key
    assert len(counts) == 5
    for sql in counts[:4]:
        plan = " ".join(str(r[-1]) for r in db.read(lambda c, sql=sql: c.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + sql).all()))
        assert "COVERING INDEX" in plan, (sql, plan)
    plan = " ".join(str(r[-1]) for r in db.read(lambda c: c.exec_driver_sql(
        "EXPLAIN QUERY PLAN " + counts[4]).all()))
    assert "INTEGER PRIMARY KEY" in plan, (counts[4], plan)  # one row per channel, read by its id


def test_the_newest_message_answered_ae_or_ar_per_channel_has_its_age(db) -> None:
    """"2 message(s) answered AE/AR" stayed in needs attention for ever: last night's or last month's, the
    operator could not tell (new-user campaign)."""
    from datetime import timedelta

    now = datetime(2026, 12, 5, 11, 0, tzinfo=UTC)
    rows = [_row(1, "a", "ERROR"), _row(2, "a", "REJECTED"), _row(3, "a", "PROCESSED"), _row(4, "b", "PROCESSED")]
    rows[1]["received_at"] = now - timedelta(minutes=30)
    db.writer.call(lambda c: c.execute(insert(messages), rows))
    status = db.read(lambda c: channel_status(c, now))
    assert status["a"]["newest_error_seconds"] == 1800.0 and status["a"]["errors"] == 2
    assert status["b"]["newest_error_seconds"] is None


def test_listing_by_status_reads_the_partial_index_in_id_order(sqlite_db: Database) -> None:
    """No sort of every matching message before the LIMIT (with or without a channel)."""
    from sqlalchemy import text

    from engine.cli.queries import MessageFilter, _query

    db = sqlite_db
    for f in (MessageFilter(status="FILTERED"), MessageFilter(status="ERROR", channel="a")):
        sql = str(_query(f).compile(db.read_engine, compile_kwargs={"literal_binds": True}))
        plan = " ".join(str(r[-1]) for r in db.read(lambda c, sql=sql: c.execute(
            text("EXPLAIN QUERY PLAN " + sql)).all()))
        assert "ix_messages_unprocessed" in plan and "ORDER BY" not in plan, plan


def test_acknowledging_all_before_a_time_takes_any_number_of_messages(db) -> None:
    """review9: ``messages ack --all-before`` acknowledged its messages with one ``id IN (…)`` of every id found:
    past SQLite's 32,766 and PostgreSQL's 65,535 bound parameters (a sender that sent junk for months) it failed
    ('too many SQL variables'), nothing acknowledged. They are acknowledged in slices, all in one transaction."""
    from engine.cli.acknowledge import acknowledge

    n = 66_000
    db.writer.call(lambda c: c.execute(insert(messages), [_row(i, "a", "ERROR") for i in range(n)]))
    done = db.writer.call(lambda c: acknowledge(c, [], datetime(2026, 12, 6, tzinfo=UTC), "a",
                                                datetime(2026, 12, 7, tzinfo=UTC)))
    assert len(done.ids) == n
    status = db.read(channel_status)
    assert (status["a"]["errors"], status["a"]["errors_acknowledged"]) == (n, n)
