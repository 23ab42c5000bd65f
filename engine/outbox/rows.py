"""Outbox rows: claiming due work in order per key, recording outcomes, replaying.

A row is due when it is QUEUED, its ``next_attempt_at`` has come, nobody holds
its lease, and no earlier QUEUED row with the same ordering key is waiting
(scheduled later or leased by another worker). So one patient's messages
leave in order while other patients' proceed. Rows that end in ERROR (dead
letters) no longer hold back the key; ``replay`` puts them back in the queue.

Several processes on one PostgreSQL database share the work. The "no earlier
row of the key is leased" test reads committed leases only, so two claims of
one destination must not overlap: the second would skip the rows the first is
leasing (``FOR UPDATE SKIP LOCKED``), see their leases not yet committed, and
take the key's later rows, which would then leave before the earlier ones. A
claim therefore first takes a transaction-scoped advisory lock for its
destination; a process that finds it taken claims nothing this round (the
holder is leasing the due rows; the next wake or poll tries again). It never
waits for it: the claim may share a group-committed transaction with other
work whose row locks the other process could be waiting for.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, exists, func, not_, or_, select, update
from sqlalchemy.orm import aliased

from engine.config.models import RetryConfig
from engine.outbox.queue import QUEUED
from engine.store.schema import outbox

__all__ = [
    "ERROR", "SENT", "Claimed", "backoff", "claim", "record_failure", "record_success", "release", "release_all",
    "replay",
]

SENT = "SENT"
ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class Claimed:
    """One leased delivery."""

    id: int
    ordering_key: str
    payload: bytes
    media_type: str
    attempts: int


#: First key of the outbox's advisory locks (PostgreSQL ``pg_try_advisory_xact_lock(int, int)``);
#: the second is the destination name's CRC-32. "rbox" in ASCII.
CLAIM_LOCK_SPACE = 0x72626F78


def _claim_lock(destination: str) -> tuple[int, int]:
    """The advisory lock key pair of ``destination`` (both signed 32-bit, as PostgreSQL wants)."""
    crc = zlib.crc32(destination.encode("utf-8"))
    return CLAIM_LOCK_SPACE, crc - (1 << 32) if crc >= 1 << 31 else crc


def _may_claim(conn: Connection, destination: str) -> bool:
    """True unless another transaction is claiming rows of ``destination`` (PostgreSQL only).

    The lock is held until the caller's transaction ends, so the claim's leases are
    committed before anyone else may claim the destination.
    """
    if conn.dialect.name != "postgresql":  # SQLite: one process, one writer thread
        return True
    return bool(conn.execute(select(func.pg_try_advisory_xact_lock(*_claim_lock(destination)))).scalar())


def claim(conn: Connection, destination: str, limit: int, now: datetime, lease: float) -> list[Claimed]:
    """Lease up to ``limit`` due rows of ``destination`` in id order.

    Returns nothing while another process's claim of ``destination`` is under way.
    """
    if not _may_claim(conn, destination):
        return []
    earlier = aliased(outbox)
    waiting = exists().where(
        earlier.c.destination == outbox.c.destination,
        earlier.c.ordering_key == outbox.c.ordering_key,
        earlier.c.status == QUEUED,
        earlier.c.id < outbox.c.id,
        or_(earlier.c.next_attempt_at > now, earlier.c.claimed_until > now),
    )
    query = (
        select(outbox.c.id, outbox.c.ordering_key, outbox.c.payload, outbox.c.media_type, outbox.c.attempts)
        .where(
            outbox.c.destination == destination,
            outbox.c.status == QUEUED,
            outbox.c.next_attempt_at <= now,
            or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until <= now),
            or_(outbox.c.ordering_key == "", not_(waiting)),
        )
        .order_by(outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=outbox)
    )
    rows = [Claimed(r.id, r.ordering_key, r.payload, r.media_type, r.attempts) for r in conn.execute(query)]
    if rows:
        conn.execute(
            update(outbox)
            .where(outbox.c.id.in_([r.id for r in rows]))
            .values(claimed_until=now + timedelta(seconds=lease))
        )
    return rows


def backoff(attempts: int, retry: RetryConfig) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (exponential, capped)."""
    delay = retry.initial_seconds * retry.multiplier ** max(attempts - 1, 0)
    return float(min(delay, retry.max_seconds))


def record_success(conn: Connection, row_id: int, response: str, now: datetime) -> None:
    """Mark a delivery SENT."""
    conn.execute(
        update(outbox)
        .where(outbox.c.id == row_id)
        .values(status=SENT, attempts=outbox.c.attempts + 1, sent_at=now, last_attempt_at=now,
                response=response[:4000], claimed_until=None, last_error="")
    )


def record_failure(
    conn: Connection, row: Claimed, error: str, permanent: bool, retry: RetryConfig, now: datetime
) -> str:
    """Schedule the next attempt, or end the row in ERROR; return the new status."""
    attempts = row.attempts + 1
    final = permanent or attempts >= retry.max_attempts
    values: dict[str, object] = {
        "attempts": attempts, "last_attempt_at": now, "last_error": error[:4000], "claimed_until": None,
    }
    if final:
        values["status"] = ERROR
    else:
        values["next_attempt_at"] = now + timedelta(seconds=backoff(attempts, retry))
    conn.execute(update(outbox).where(outbox.c.id == row.id).values(**values))
    return ERROR if final else QUEUED


def release(conn: Connection, ids: list[int]) -> None:
    """Give back leases without an attempt (an earlier row of the key failed)."""
    if ids:
        conn.execute(update(outbox).where(outbox.c.id.in_(ids)).values(claimed_until=None))


def replay(conn: Connection, *, message_ids: list[int] | None = None, row_ids: list[int] | None = None,
           now: datetime) -> int:
    """Put ERROR rows (of the given messages or ids) back in the queue; return how many."""
    conditions = [outbox.c.status == ERROR]
    if message_ids is not None:
        conditions.append(outbox.c.message_id.in_(message_ids))
    if row_ids is not None:
        conditions.append(outbox.c.id.in_(row_ids))
    result = conn.execute(
        update(outbox).where(and_(*conditions)).values(
            status=QUEUED, attempts=0, next_attempt_at=now, claimed_until=None, last_error=""
        )
    )
    return int(result.rowcount or 0)


def release_all(conn: Connection) -> int:
    """Drop every lease: at start-up of the only process using an embedded database (a crashed
    predecessor's leases would otherwise hold back their keys until they expire)."""
    result = conn.execute(update(outbox).where(outbox.c.claimed_until.is_not(None)).values(claimed_until=None))
    return int(result.rowcount or 0)
