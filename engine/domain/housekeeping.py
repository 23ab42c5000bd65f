"""Housekeeping jobs (run by apscheduler; listed by ``radbridge status``).

* ``worklist-expire``: SCHEDULED/ARRIVED steps whose start lies more than
  ``worklist.expire_after_hours`` in the past leave the worklist (status EXPIRED).
* ``worklist-retention``: finished steps (COMPLETED, DISCONTINUED, CANCELED,
  EXPIRED) unchanged for ``worklist.retention_days`` are deleted, with orders left
  without steps. Started steps are kept: an MPPS may still complete them.
* ``rejected-retention``: REJECTED messages (refused input, and what a listener
  kept of junk, oversize and unfinished frames) received more than
  ``messages.rejected_retention_days`` ago are deleted, in short transactions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import Connection, delete, exists, select, update

from engine.config.models import MessagesConfig, WorklistConfig
from engine.domain.tables import orders, procedure_steps
from engine.store.database import Database
from engine.store.schema import messages

__all__ = [
    "FINISHED", "Job", "expire_steps", "message_jobs", "purge_finished", "purge_rejected", "schedule_jobs",
    "worklist_jobs",
]  # fmt: skip

#: Rows deleted per transaction by purge_rejected (the writer is not held long).
PURGE_BATCH = 1000

FINISHED = ("COMPLETED", "DISCONTINUED", "CANCELED", "EXPIRED")
_OPEN = ("SCHEDULED", "ARRIVED")


def expire_steps(conn: Connection, now: datetime, max_age: timedelta, site_tz: tzinfo = UTC) -> int:
    """Mark open steps that started before ``now - max_age`` (site time) EXPIRED; return how many."""
    cutoff = (now - max_age).astimezone(site_tz).strftime("%Y%m%d%H%M%S")
    s = procedure_steps.c
    stmt = update(procedure_steps).where(s.status.in_(_OPEN), s.start_datetime < cutoff)
    return int(conn.execute(stmt.values(status="EXPIRED", updated_at=now)).rowcount or 0)


def purge_finished(conn: Connection, now: datetime, retention: timedelta) -> int:
    """Delete finished steps older than ``retention`` and the orders they leave empty."""
    s = procedure_steps.c
    result = conn.execute(
        delete(procedure_steps).where(s.status.in_(FINISHED), s.updated_at < now - retention)
    )
    has_steps = exists(select(s.id).where(s.order_pk == orders.c.id))
    conn.execute(delete(orders).where(~has_steps))
    return int(result.rowcount or 0)


def purge_rejected(conn: Connection, now: datetime, retention: timedelta, limit: int = PURGE_BATCH) -> int:
    """Delete up to ``limit`` REJECTED messages received before ``now - retention``, oldest first."""
    m = messages.c
    old = select(m.id).where(m.status == "REJECTED", m.received_at < now - retention).order_by(m.id).limit(limit)
    return int(conn.execute(delete(messages).where(m.id.in_(old.scalar_subquery()))).rowcount or 0)


@dataclass(frozen=True, slots=True)
class Job:
    """One scheduled job: id, what it does, how often, the function to call."""

    id: str
    description: str
    interval_seconds: float
    run: Callable[[], int]


def worklist_jobs(db: Database, cfg: WorklistConfig, site_tz: tzinfo = UTC) -> list[Job]:
    """The housekeeping jobs for ``cfg``, each one writer transaction."""
    age, keep = timedelta(hours=cfg.expire_after_hours), timedelta(days=cfg.retention_days)

    def expire() -> int:
        return db.writer.call(lambda conn: expire_steps(conn, datetime.now(UTC), age, site_tz))

    def purge() -> int:
        return db.writer.call(lambda conn: purge_finished(conn, datetime.now(UTC), keep))

    every = cfg.housekeeping_interval_seconds
    return [
        Job("worklist-expire", f"scheduled steps older than {cfg.expire_after_hours} h leave the worklist",
            every, expire),
        Job("worklist-retention", f"finished steps older than {cfg.retention_days} days are deleted",
            every, purge),
    ]  # fmt: skip


def message_jobs(db: Database, cfg: MessagesConfig, every: float) -> list[Job]:
    """The retention job for REJECTED messages: batches of PURGE_BATCH rows, one writer transaction each."""
    keep = timedelta(days=cfg.rejected_retention_days)

    def purge() -> int:
        total = 0
        while (done := db.writer.call(lambda conn: purge_rejected(conn, datetime.now(UTC), keep))) > 0:
            total += done
            if done < PURGE_BATCH:
                break
        return total

    return [Job("rejected-retention", f"rejected messages older than {cfg.rejected_retention_days:g} days are deleted",
                every, purge)]  # fmt: skip


def schedule_jobs(scheduler: Any, jobs: list[Job]) -> None:
    """Add ``jobs`` to an apscheduler 3 scheduler as interval jobs (replacing same ids).

    Late runs (the loop or the executor was busy) run once as soon as they can (``coalesce``, no grace
    limit): apscheduler's default would skip a run more than 1 s late and log a WARNING for it.
    """
    for job in jobs:
        scheduler.add_job(job.run, "interval", seconds=job.interval_seconds, id=job.id, name=job.description,
                          replace_existing=True, coalesce=True, max_instances=1, misfire_grace_time=None)
