"""Bounding ``fhir_versions``: the ``fhir-history-retention`` housekeeping job.

Every change of a resource adds a row to ``fhir_versions``; without this job the table
grows for ever. What the API promises decides what may go:

* types in :data:`~engine.fhir.registry.FULL_HISTORY` (DiagnosticReport): every version
  is served by vread and ``_history``, so none is ever removed here;
* every other type: the current version always stays; earlier ones stay while they are
  among the last ``keep_versions`` (current included) or younger than ``keep_days``
  (``http.fhir.history``), and vread / ``_history`` serve exactly what stays.

The job walks ``fhir_versions`` in resource order, ``batch`` candidates per writer
transaction, so the writer is never held long and each run is one pass over the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import Connection, delete, select, tuple_

from engine.config.models import FhirHistoryConfig
from engine.domain.housekeeping import Job
from engine.fhir.instant import instant
from engine.fhir.registry import FULL_HISTORY
from engine.fhir.tables import fhir_resources, fhir_versions
from engine.store.database import Database

__all__ = ["PRUNE_BATCH", "Retention", "history_jobs", "prune_all", "prune_versions"]

#: Versions deleted per transaction.
PRUNE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Retention:
    """What is kept of the resources whose history is not kept in full."""

    keep_versions: int = 1
    keep_age: timedelta = timedelta(0)

    @staticmethod
    def of(cfg: FhirHistoryConfig) -> Retention:
        """The retention ``http.fhir.history`` configures."""
        return Retention(cfg.keep_versions, timedelta(days=cfg.keep_days))


def prune_versions(conn: Connection, now: datetime, retention: Retention, after: int = 0,
                   limit: int = PRUNE_BATCH) -> tuple[int, int | None]:
    """Delete up to ``limit`` versions that ``retention`` lets go, of resources with pk > ``after``.

    Returns (deleted, the last resource pk looked at, or None when the pass is complete).
    """
    v, r = fhir_versions.c, fhir_resources.c
    cutoff = instant(now - retention.keep_age)
    candidates = conn.execute(
        select(v.resource_pk, v.version_id).join(fhir_resources, r.id == v.resource_pk)
        .where(v.resource_pk > after, r.res_type.not_in(sorted(FULL_HISTORY)),
               v.version_id <= r.version_id - retention.keep_versions, v.last_updated < cutoff)
        .order_by(v.resource_pk, v.version_id).limit(limit)).all()
    if not candidates:
        return 0, None
    keys = [(int(c.resource_pk), int(c.version_id)) for c in candidates]
    conn.execute(delete(fhir_versions).where(tuple_(v.resource_pk, v.version_id).in_(keys)))
    # A full batch may have stopped inside a resource: look at that resource again next time.
    last = keys[-1][0] - 1 if len(keys) == limit else keys[-1][0]
    return len(keys), last


def prune_all(db: Database, retention: Retention, now: datetime | None = None, batch: int = PRUNE_BATCH) -> int:
    """One pass over ``fhir_versions``, one writer transaction per batch; how many versions were deleted."""
    moment, total, after = now or datetime.now(UTC), 0, 0
    while True:
        done, last = db.writer.call(partial(prune_versions, now=moment, retention=retention, after=after, limit=batch))
        total += done
        if last is None or done < batch:
            return total
        after = last


def history_jobs(db: Database, cfg: FhirHistoryConfig) -> list[Job]:
    """The ``fhir-history-retention`` job for ``cfg``."""
    retention = Retention.of(cfg)
    kept = "the current version" if cfg.keep_versions == 1 else f"the last {cfg.keep_versions} versions"
    younger = f" and those younger than {cfg.keep_days:g} days" if cfg.keep_days else ""
    return [Job("fhir-history-retention", f"FHIR versions beyond {kept}{younger} are deleted (DiagnosticReport: "
                "every version kept)", cfg.interval_seconds, lambda: prune_all(db, retention))]
