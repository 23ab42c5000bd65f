"""Scheduled jobs: each run is recorded in ``job_runs`` so ``radbridge status`` can show it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from engine.store.database import Database
from engine.store.schema import job_runs

__all__ = ["record_run", "recorded"]

log = logging.getLogger(__name__)


def record_run(conn: Connection, job_id: str, description: str, result: int | None, error: str) -> None:
    """Upsert the outcome of one run."""
    now = datetime.now(UTC)
    exists = conn.execute(select(job_runs.c.runs).where(job_runs.c.job_id == job_id)).first()
    if exists is None:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(insert(job_runs).values(job_id=job_id, description=description, last_run_at=now,
                                             last_result=result, last_error=error, runs=1)
                     .on_conflict_do_nothing())
        return
    conn.execute(update(job_runs).where(job_runs.c.job_id == job_id).values(
        description=description, last_run_at=now, last_result=result, last_error=error, runs=job_runs.c.runs + 1))


def recorded(db: Database, job_id: str, description: str, fn: Callable[[], int]) -> Callable[[], int]:
    """Wrap a job so that its result or error is recorded; errors are logged (result -1), never raised."""

    def run() -> int:
        try:
            result, error = fn(), ""
        except Exception as exc:
            log.exception("job %s failed", job_id)
            result, error = -1, f"{type(exc).__name__}: {exc}"
        db.writer.call(partial(record_run, job_id=job_id, description=description, result=result, error=error))
        return result

    return run
