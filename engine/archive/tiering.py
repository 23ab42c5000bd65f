"""Tiering: the primary (short-term) copy leaves once the secondary (long-term) copy is verified.

:func:`tier` takes instances received more than ``age`` ago whose primary copy is
PRESENT and whose secondary copy is VERIFIED, re-reads the secondary copy (it
must still be intact, now), marks the primary TIERED and only then removes the
primary file: a crash in between leaves a file nobody reads, never an index
that points at nothing. Reads then come from the secondary
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

__all__ = ["candidates", "tier"]

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


def _mark_tiered(conn: Connection, inst: CurrentInstance, now: datetime) -> bool:
    """TIERED, unless the instance changed since it was picked (a new version, a failed check): False then."""
    c = instance_copies.c
    unchanged = exists().where(instances.c.id == inst.instance_pk, instances.c.sha256 == inst.sha256,
                               instances.c.path == inst.path)
    done = conn.execute(update(instance_copies).where(
        c.instance_pk == inst.instance_pk, c.primary_state == "PRESENT", c.secondary_state == "VERIFIED", unchanged,
    ).values(primary_state="TIERED", primary_removed_at=now))
    return bool(done.rowcount)


def tier(archive: Archive, db: Database, age: timedelta, now: datetime | None = None) -> int:
    """Remove the primary copy of every eligible instance; return how many left the primary."""
    if archive.secondary is None:
        return 0
    now = now or datetime.now(UTC)
    removed = 0
    for inst in db.read(partial(candidates, cutoff=now - age)):
        problem = check_copy(archive.secondary, inst)
        if problem is not None:
            log.warning("tiering: instance %s kept in the primary: its secondary copy is %s", inst.sop_instance_uid,
                        problem[0])
            continue
        if not db.writer.call(partial(_mark_tiered, inst=inst, now=now)):
            continue
        try:
            archive.primary.delete(inst.path)
        except ArchiveUnavailable as exc:
            log.error("tiering: instance %s marked tiered but its primary file stays: %s", inst.sop_instance_uid,
                      exc)
        removed += 1
    if removed:
        log.info("tiering: %d instance(s) left the primary location", removed)
    return removed
