"""Enqueuing outbound work inside the caller's transaction (no I/O here)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, insert

from engine.store.fast import FastStatement
from engine.store.schema import outbox

__all__ = ["QUEUED", "enqueue"]

QUEUED = "QUEUED"
# Built once and run on the raw cursor: this is on the receive path.
_INSERT = FastStatement(
    insert(outbox).values({c.name: bindparam(c.name) for c in outbox.c if c.name != "id"}).returning(outbox.c.id)
)


def enqueue(
    conn: Connection,
    *,
    channel: str,
    destination: str,
    payload: bytes,
    media_type: str,
    ordering_key: str = "",
    message_id: int | None = None,
    now: datetime | None = None,
) -> int:
    """Add one delivery for ``destination``; it commits with the caller's transaction."""
    now = now or datetime.now(UTC)
    values = {
        "message_id": message_id, "channel": channel, "destination": destination, "ordering_key": ordering_key,
        "status": QUEUED, "media_type": media_type, "payload": payload, "attempts": 0, "created_at": now,
        "next_attempt_at": now, "last_error": "", "response": "",
    }
    values.update({"last_attempt_at": None, "sent_at": None, "claimed_until": None})
    return int(_INSERT.execute(conn, values).fetchone()[0])
