"""Tiering: the primary (short-term) copy leaves once the secondary (long-term) copy is verified.

:func:`tier` takes instances received more than ``age`` ago whose primary copy is
PRESENT and whose secondary copy is VERIFIED, re-reads the secondary copy (it
must still be intact, now), marks the primary TIERING, removes the primary file,
then marks it TIERED. A crash in between leaves a TIERING row, which the next run
completes (the file removed, the row TIERED): never an orphan file, never an index
that names a removed file as present. Reads then come from the secondary
(:func:`engine.archive.archive.reading_order`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import Connection, exists, select, update

from engine.archive.archive import Archive, CurrentInstance, current_instance
from engine.archive.copy_tables import instance_copies
from engine.archive.fixity import check_copy
from engine.domain.instance_tables import instances
from engine.errors import ArchiveUnavailable
from engine.store.database import Database

__all__ = ["candidates", "finish_interrupted", "tier"]

log = logging.getLogger(__name__)

BATCH = 500


def candidates(conn: Connection, cutoff: datetime, limit: int = BATCH) -> list[CurrentInstance]:
    """Instances received before ``cutoff`` with a PRESENT primary and a VERIFIED secondary copy."""
    c = instance_copies.c
    uids = conn.execute(
        select(instances.c.sop_instance_uid).join(instance_copies, c.instance_pk == instances.c.id)
        .where(c.primary_state == "PRESENT", c.secondary_state == "VERIFIED", instances.c.received_at < cutoff)
        .order_by(instances.c.id).limit(limit)
    ).scalars().all()
    found = (current_instance(conn, uid) for uid in uids)
    return [inst for inst in found if inst is not None]


def _mark(conn: Connection, inst: CurrentInstance, now: datetime) -> bool:
    """TIERING, unless the instance changed since it was picked (a new version, a failed check): False then."""
    c = instance_copies.c
    unchanged = exists().where(instances.c.id == inst.instance_pk, instances.c.sha256 == inst.sha256,
                               instances.c.path == inst.path)
    done = conn.execute(update(instance_copies).where(
        c.instance_pk == inst.instance_pk, c.primary_state == "PRESENT", c.secondary_state == "VERIFIED", unchanged,
    ).values(primary_state="TIERING", primary_removed_at=now))
    return bool(done.rowcount)


def _mark_tiered(conn: Connection, instance_pk: int) -> None:
    c = instance_copies.c
    conn.execute(update(instance_copies).where(c.instance_pk == instance_pk, c.primary_state == "TIERING")
                 .values(primary_state="TIERED"))


def _leaving(conn: Connection, limit: int = BATCH) -> list[tuple[int, str]]:
    """(instance pk, path) of the instances left TIERING (a run interrupted between mark and removal)."""
    c = instance_copies.c
    rows = conn.execute(select(instances.c.id, instances.c.path).join(instance_copies, c.instance_pk == instances.c.id)
                        .where(c.primary_state == "TIERING").order_by(instances.c.id).limit(limit)).all()
    return [(int(r.id), str(r.path)) for r in rows]


def _remove(archive: Archive, db: Database, instance_pk: int, path: str, uid: str) -> bool:
    """Remove the primary file, then mark it TIERED; False (still TIERING, retried next run) if it stays."""
    try:
        archive.primary.delete(path)
    except ArchiveUnavailable as exc:
        log.error("tiering: instance %s: its primary file stays (retried next run): %s", uid, exc)
        return False
    db.writer.call(partial(_mark_tiered, instance_pk=instance_pk))
    return True


def finish_interrupted(archive: Archive, db: Database) -> int:
    """Complete the removals a crash interrupted (TIERING rows); return how many."""
    done = 0
    for pk, path in db.read(_leaving):
        done += _remove(archive, db, pk, path, f"#{pk}")
    if done:
        log.warning("tiering: %d primary file(s) whose removal was interrupted removed now", done)
    return done


def tier(archive: Archive, db: Database, age: timedelta, now: datetime | None = None) -> int:
    """Remove the primary copy of every eligible instance; return how many left the primary.

    Crash-safe in three steps: mark TIERING (reads still try the primary, then the
    secondary; fixity no longer expects the primary), remove the file, mark TIERED. A run
    interrupted in between is completed by the next one (:func:`finish_interrupted`), so no
    orphan file stays in the primary and the index never names a removed file as PRESENT.
    """
    if archive.secondary is None:
        return 0
    finish_interrupted(archive, db)
    now = now or datetime.now(UTC)
    removed = 0
    for inst in db.read(partial(candidates, cutoff=now - age)):
        problem = check_copy(archive.secondary, inst)
        if problem is not None:
            log.warning("tiering: instance %s kept in the primary: its secondary copy is %s", inst.sop_instance_uid,
                        problem[0])
            continue
        if not db.writer.call(partial(_mark, inst=inst, now=now)):
            continue
        removed += _remove(archive, db, inst.instance_pk, inst.path, inst.sop_instance_uid)
    if removed:
        log.info("tiering: %d instance(s) left the primary location", removed)
    return removed
