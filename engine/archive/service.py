"""The archive inside a running engine: locations checked at start, the replication route, scheduled jobs.

* :func:`checked_archive` builds the archive from ``archive:`` and proves each
  location can be written, or raises a :class:`~engine.errors.ConfigError`
  naming the setting (an unreachable object store, a missing bucket, an
  unwritable directory stop the start, loudly).
* :func:`replication_routes` is the outbox route of copies to the secondary;
  :func:`backfill_copies` (at start) owes a copy for instances stored before the
  secondary was configured.
* :func:`archive_jobs`: ``archive-fixity`` re-reads a sample of copies every
  ``archive.verify_interval_seconds`` (as many current instances and as many old
  versions, least recently checked first); ``archive-tiering`` moves old instances
  out of the primary (``archive.tier_after_days``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, update

from engine.archive.archive import Archive, archive_from_config
from engine.archive.copy_tables import instance_copies
from engine.archive.fixity import verify
from engine.archive.history import verify_history
from engine.archive.replication import DESTINATION, ReplicationDestination, owe_missing_copies
from engine.archive.spool_budget import below_reserve, short_of_reserve
from engine.archive.tiering import tier
from engine.config import Config
from engine.config.models import ArchiveConfig
from engine.domain.housekeeping import Job
from engine.errors import ArchiveUnavailable, ConfigError
from engine.outbox.queue import QUEUED
from engine.outbox.rows import ERROR
from engine.outbox.worker import Route
from engine.store.database import Database
from engine.store.schema import outbox

__all__ = ["archive_jobs", "backfill_copies", "checked_archive", "drop_copies_owed_to_a_removed_secondary",
           "replication_routes"]

log = logging.getLogger(__name__)


def checked_archive(config: Config) -> Archive:
    """The configured archive, every location created if need be and written to once."""
    archive = archive_from_config(config.engine)
    problems = []
    for name, location in archive.locations().items():
        try:
            location.check()
        except ArchiveUnavailable as exc:
            key = "primary_s3" if name == "primary" and config.engine.archive.primary_s3 else name
            problems.append(f"{config.where(config.engine_file, ('archive', key))}: {exc}")
    if problems:
        raise ConfigError(problems)
    spool, reserve = config.engine.archive_dir(), config.engine.archive.min_free_bytes
    if below_reserve(spool, reserve):  # said at start, not first at the first refused image
        log.warning("archive: %s", short_of_reserve(spool, reserve))
    return archive


def backfill_copies(db: Database) -> int:
    """Queue a copy for every instance that owes none yet (a secondary configured after images were
    stored), one short transaction per batch; return how many."""
    total = 0
    while done := db.writer.call(lambda conn: owe_missing_copies(conn, datetime.now(UTC))):
        total += done
    if total:
        log.info("archive: %d instance(s) stored before the secondary location was configured queued for copying",
                 total)
    return total


_REMOVED = "the secondary location is no longer configured (archive.secondary); replay after configuring it again"


def _drop_owed(conn: Connection) -> int:
    """ERROR (with the reason) every copy still QUEUED for the secondary; their copies back to NONE."""
    dropped = conn.execute(update(outbox).where(outbox.c.destination == DESTINATION, outbox.c.status == QUEUED)
                           .values(status=ERROR, last_error=_REMOVED)).rowcount
    conn.execute(update(instance_copies).where(instance_copies.c.secondary_state == "PENDING")
                 .values(secondary_state="NONE"))
    return int(dropped or 0)


def drop_copies_owed_to_a_removed_secondary(db: Database) -> int:
    """At start without a secondary: copies still owed to one configured before would stay QUEUED forever
    (no route delivers them). They end as dead letters saying why (``outbox list --status ERROR``), and
    the instances owe nothing (NONE): configuring a secondary again owes every instance a copy at the
    next start (:func:`backfill_copies`). Returns how many; logged as a warning."""
    dropped: int = db.writer.call(_drop_owed)
    if dropped:
        log.warning("archive: %d copy(ies) owed to a secondary location that is no longer configured were"
                    " dropped (outbox ERROR, destination %s)", dropped, DESTINATION)
    return dropped


def replication_routes(cfg: ArchiveConfig, archive: Archive | None, db: Database) -> dict[str, Route]:
    """The outbox route that copies instances to the secondary; none without a secondary."""
    if archive is None or archive.secondary is None:
        return {}
    return {DESTINATION: Route(ReplicationDestination(archive, db), cfg.replication_retry,
                               cfg.replication_timeout_seconds)}


def archive_jobs(cfg: ArchiveConfig, archive: Archive, db: Database) -> list[Job]:
    """The fixity job (a sample per run) and, with ``tier_after_days`` and a secondary, the tiering job."""
    jobs = []
    if cfg.verify_sample > 0:
        def check() -> int:
            checked, findings = verify(archive, db, sample=cfg.verify_sample)
            old, history = verify_history(archive, db, sample=cfg.verify_sample)
            log.info("fixity: %d instance(s) and %d old version(s) checked, %d problem(s)", checked, old,
                     len(findings) + len(history))
            return len(findings) + len(history)

        jobs.append(Job("archive-fixity", f"re-read {cfg.verify_sample} archived instances, report mismatches",
                        cfg.verify_interval_seconds, check))
    if cfg.tier_after_days is not None and archive.secondary is not None:
        age = timedelta(days=cfg.tier_after_days)
        jobs.append(Job("archive-tiering", f"primary copies older than {cfg.tier_after_days:g} days leave",
                        cfg.tier_interval_seconds, lambda: tier(archive, db, age)))
    return jobs
