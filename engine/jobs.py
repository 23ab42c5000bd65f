"""Scheduled jobs: each run is recorded in ``job_runs`` so ``radbridge status`` can show it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from engine.store.database import Database, unavailable
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

    store_down = False  # the last run found the database unavailable (said once per outage, not each run)

    def run() -> int:
        nonlocal store_down
        try:
            result, error = fn(), ""
            db.writer.call(partial(record_run, job_id=job_id, description=description, result=result, error=error))
        except Exception as exc:
            if not unavailable(exc):
                log.exception("job %s failed", job_id)
                with contextlib.suppress(Exception):  # recorded when the store can: status shows it
                    db.writer.call(partial(record_run, job_id=job_id, description=description, result=-1,
                                           error=f"{type(exc).__name__}: {exc}"))
                return -1
            if not store_down:  # nothing to record it in; the next run after the outage is recorded
                log.error("job %s: store unavailable (%s); it runs again on schedule", job_id, type(exc).__name__)
                store_down = True
            return -1
        if store_down:
            log.info("job %s: store available again", job_id)
            store_down = False
        return result

    return run
