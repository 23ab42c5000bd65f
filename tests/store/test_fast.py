"""FastStatement / FastInsert: the same rows as SQLAlchemy Core, on both backends."""

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import bindparam, select
from sqlalchemy.dialects import sqlite

from engine.domain.tables import orders
from engine.store.fast import FastInsert, FastStatement, first_row, sqlite_utc
from engine.store.schema import UTCDateTime, audit_events, messages

_CORE = UTCDateTime().dialect_impl(sqlite.dialect()).bind_processor(sqlite.dialect())


@given(st.datetimes(timezones=st.sampled_from([UTC, ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York"),
                                               timezone(timedelta(hours=-11, minutes=-30))])))
def test_sqlite_utc_text_is_what_core_stores(value: datetime) -> None:
    try:
        expected = _CORE(value)
    except OverflowError:  # out of range once moved to UTC: both refuse it
        with pytest.raises(OverflowError):
            sqlite_utc(value)
        return
    assert sqlite_utc(value) == expected


def test_sqlite_utc_refuses_naive_and_keeps_none() -> None:
    assert sqlite_utc(None) is None
    with pytest.raises(ValueError, match="naive"):
        sqlite_utc(datetime(2026, 1, 1))


_FIND_EVENT = FastStatement(
    select(audit_events.c.id, audit_events.c.at, audit_events.c.detail)
    .where(audit_events.c.object_id == bindparam("object_id"), audit_events.c.at >= bindparam("since"))
)
_INSERT_EVENT = FastInsert(audit_events)


def test_insert_then_select_round_trip(db) -> None:
    at = datetime(2026, 11, 22, 9, 30, 1, 250, tzinfo=ZoneInfo("Europe/Paris"))

    def work(conn):
        pk = _INSERT_EVENT.execute(conn, {"at": at, "actor": "t", "action": "a", "object_type": "x",
                                          "object_id": "o1", "detail": "d"})
        row = first_row(_FIND_EVENT, conn, {"object_id": "o1", "since": at - timedelta(seconds=1)})
        later = first_row(_FIND_EVENT, conn, {"object_id": "o1", "since": at + timedelta(seconds=1)})
        core = conn.execute(select(audit_events.c.at).where(audit_events.c.id == pk)).scalar_one()
        return pk, row, later, core

    pk, row, later, core = db.writer.call(work)
    assert pk > 0 and row.id == pk and row.detail == "d"
    assert later is None  # the datetime comparison runs on the stored text / timestamp
    assert core == at.astimezone(UTC)  # Core reads back what FastInsert wrote


def test_fast_insert_fills_column_defaults_and_leaves_the_rest_to_the_database(db) -> None:
    order = FastInsert(orders)
    message = FastInsert(messages)
    with pytest.raises(Exception, match=r"(?i)not[ -]null"):  # patient_pk: no default, NOT NULL
        db.writer.call(lambda conn: order.execute(conn, {"order_key": "k"}))

    def work(conn):
        mid = message.execute(conn, {
            "channel": "c", "received_at": datetime.now(UTC), "peer": "", "status": "PROCESSED", "control_id": "1",
            "sender": "", "sending_application": "", "sending_facility": "", "message_type": "ADT^A01",
            "version": "2.5", "patient_id": "", "accession_number": "", "charset": "ascii", "body_hash": "h",
            "raw": b"MSH", "text": "MSH", "ack_code": "AA", "ack": "", "error_code": None, "error_location": "",
            "error": "", "last_duplicate_at": None,
        })  # fmt: skip
        return conn.execute(select(messages.c.duplicate_count).where(messages.c.id == mid)).scalar_one()

    assert db.writer.call(work) == 0  # duplicate_count left out: its column default
