"""Enqueuing outbound work inside the caller's transaction (no I/O here)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, insert

from engine.store.schema import outbox

__all__ = ["QUEUED", "enqueue"]

QUEUED = "QUEUED"


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
    result = conn.execute(
        insert(outbox).values(
            message_id=message_id,
            channel=channel,
            destination=destination,
            ordering_key=ordering_key,
            status=QUEUED,
            media_type=media_type,
            payload=payload,
            attempts=0,
            created_at=now,
            next_attempt_at=now,
            last_error="",
            response="",
        )
    )
    return int(result.inserted_primary_key[0]) if result.inserted_primary_key else 0
