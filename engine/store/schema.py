"""The SQL schema (SQLAlchemy Core). Alembic migrations in ``migrations/`` create it.

Message statuses follow the vocabulary interface teams know from Mirth:
RECEIVED → PROCESSED | FILTERED | ERROR | REJECTED, plus UNCHANGED: accepted (AA)
but its handlers changed nothing, the reason in ``note``. Outbox rows are
QUEUED → SENT, or ERROR once a permanent failure or the retry limit ends them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)

__all__ = [
    "UNPROCESSED_SQL", "UTCDateTime", "audit_events", "job_runs", "message_attempts", "messages", "metadata", "outbox",
]

#: The condition of the partial index over messages that need attention (not PROCESSED).
UNPROCESSED_SQL = "status <> 'PROCESSED'"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out; stored as naive UTC on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if isinstance(value, datetime) else None


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
Id = BigInteger().with_variant(Integer(), "sqlite")

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(64), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("peer", String(128), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("control_id", String(199), nullable=False, default=""),
    Column("sender", String(256), nullable=False, default=""),
    Column("sending_application", String(227), nullable=False, default=""),
    Column("sending_facility", String(227), nullable=False, default=""),
    Column("message_type", String(32), nullable=False, default=""),
    Column("version", String(16), nullable=False, default=""),
    Column("patient_id", String(64), nullable=False, default=""),
    Column("accession_number", String(64), nullable=False, default=""),
    Column("charset", String(32), nullable=False, default=""),
    Column("body_hash", String(64), nullable=False, default=""),
    Column("raw", LargeBinary, nullable=False),
    Column("text", Text, nullable=False, default=""),
    Column("ack_code", String(2), nullable=False, default=""),
    Column("ack", Text, nullable=False, default=""),
    Column("error_code", Integer, nullable=True),
    Column("error_location", String(64), nullable=False, default=""),
    Column("error", Text, nullable=False, default=""),
    Column("duplicate_count", Integer, nullable=False, default=0),
    Column("last_duplicate_at", UTCDateTime(), nullable=True),
    # The records the channel's mapping produced (JSON), as the handlers received them.
    Column("mapped", Text, nullable=False, default="", server_default=""),
    # What the reader tolerated (a timestamp outside the grammar, a stray line before MSH), then
    # what the handlers left alone and why (ignored non-imaging order, resent order, cancel of
    # a cancelled order ...): one line each, shown by ``messages show``.
    Column("note", Text, nullable=False, default="", server_default=""),
    # An AE/AR message an operator dealt with (``radbridge messages ack``, audited as message.ack): no longer
    # counted by ``radbridge status`` under "needs attention". A replay clears it (its outcome is new).
    Column("acknowledged_at", UTCDateTime(), nullable=True),
    # The duplicate lookup (engine.channel.persist): all four, or SQLite's planner scans the channel's window.
    Index(None, "channel", "sender", "control_id", "received_at"),
    Index(None, "channel", "received_at"),
    # Only what needs attention (errors, rejects, filtered, and whether acknowledged): processed messages,
    # nearly all of them, cost no entry. A query uses it when it repeats the condition (list_messages).
    Index("ix_messages_unprocessed", "status", "id", "channel", "acknowledged_at",
          sqlite_where=text(UNPROCESSED_SQL), postgresql_where=text(UNPROCESSED_SQL)),
    Index(None, "patient_id"),
    Index(None, "accession_number"),
)

#: Each time a message was processed: on receipt (attempt 1) and by every ``messages replay``,
#: which reprocesses the message in place. Attempt 1 is written by the first replay, from the
#: row as the receipt left it (receiving a message costs no extra row); until then ``messages
#: show`` derives it from the row. ``actor`` is the peer (receipt) or the OS account (replay).
message_attempts = Table(
    "message_attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", Id, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("via", String(16), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("ack_code", String(2), nullable=False, default=""),
    Column("error_code", Integer, nullable=True),
    Column("error_location", String(64), nullable=False, default=""),
    Column("error", Text, nullable=False, default=""),
    Column("note", Text, nullable=False, default=""),
    Column("ack", Text, nullable=False, default=""),
    UniqueConstraint("message_id", "attempt"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", Id, ForeignKey("messages.id", ondelete="SET NULL"), nullable=True),
    Column("channel", String(64), nullable=False),
    Column("destination", String(64), nullable=False),
    Column("ordering_key", String(128), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("media_type", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("last_attempt_at", UTCDateTime(), nullable=True),
    Column("sent_at", UTCDateTime(), nullable=True),
    Column("claimed_until", UTCDateTime(), nullable=True),
    Column("last_error", Text, nullable=False, default=""),
    Column("response", Text, nullable=False, default=""),
    Index(None, "destination", "status", "next_attempt_at"),
    Index(None, "destination", "ordering_key", "status", "id"),
    Index(None, "message_id"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("object_type", String(32), nullable=False),
    Column("object_id", String(128), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Index(None, "at"),
    Index(None, "object_type", "object_id"),
)

job_runs = Table(
    "job_runs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("description", String(256), nullable=False, default=""),
    Column("last_run_at", UTCDateTime(), nullable=False),
    Column("last_result", Integer, nullable=True),
    Column("last_error", Text, nullable=False, default=""),
    Column("runs", Integer, nullable=False, default=0),
)
