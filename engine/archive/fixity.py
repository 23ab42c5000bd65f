"""Fixity: re-read stored copies, compare them with the checksums recorded at ingest, and repair.

:func:`verify` checks every copy that should exist (the primary unless tiered
away, the secondary once its copy was made) of the instances in scope (one
study, all, or a sample least recently checked first), records what it found
in ``instance_copies`` and returns every problem. :func:`restore` rebuilds a
missing or damaged copy from an intact one in the other location, reads it
back and checks it again.

A copy is intact when it is a Part 10 file whose File Meta Information hashes
to ``instance_copies.meta_sha256`` and whose dataset hashes to
``instances.sha256``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import Connection, update

from engine.archive.archive import Archive, CurrentInstance, instances_of
from engine.archive.copy_tables import instance_copies
from engine.archive.objects import Location, fixity
from engine.archive.replication import mark_copies
from engine.errors import ArchiveUnavailable, CopyMissing, MalformedDataset
from engine.store.database import Database

__all__ = ["Finding", "Repair", "check_copy", "expected", "restore", "restore_copies", "verify", "verify_copies"]

log = logging.getLogger(__name__)

#: Copy state -> the instance_copies column value for a copy that is fine.
_GOOD = {"primary": "PRESENT", "secondary": "VERIFIED"}


@dataclass(frozen=True, slots=True)
class Finding:
    """One copy that is not what the index says: ``problem`` is MISSING, DAMAGED or UNREADABLE."""

    sop_instance_uid: str
    study_instance_uid: str
    location: str
    problem: str
    detail: str
    version: int = 1  # the version's number (1 as received)
    replaced: bool = False  # an old version kept as history (:mod:`engine.archive.history`), not the current


@dataclass(frozen=True, slots=True)
class Repair:
    """One copy rebuilt (``ok``) or not, from the other location."""

    sop_instance_uid: str
    location: str
    source: str
    ok: bool
    detail: str
    version: int = 1
    replaced: bool = False


def check_copy(location: Location, inst: CurrentInstance) -> tuple[str, str] | None:
    """(problem, detail) when ``location``'s copy of ``inst`` is not intact, else None."""
    try:
        found = fixity(location, inst.path)
    except CopyMissing:
        return "MISSING", "no such object"
    except MalformedDataset as exc:
        return "DAMAGED", str(exc)
    except ArchiveUnavailable as exc:
        return "UNREADABLE", str(exc)
    if found.sha256 != inst.sha256:
        return "DAMAGED", "dataset checksum differs"
    if inst.meta_sha256 and found.meta_sha256 != inst.meta_sha256:
        return "DAMAGED", "File Meta Information checksum differs"
    return None


def expected(archive: Archive, inst: CurrentInstance) -> list[Location]:
    """The locations that should hold an intact copy of ``inst`` now."""
    out = [] if inst.primary_state in ("TIERING", "TIERED") else [archive.primary]
    if archive.secondary is not None and inst.secondary_state not in ("NONE", "PENDING"):
        out.append(archive.secondary)
    return out


def _record(conn: Connection, pk: int, states: dict[str, str], now: datetime) -> None:
    values: dict[str, object] = {"checked_at": now}
    values.update({f"{name}_state": state for name, state in states.items()})
    if states.get("secondary") == "VERIFIED":
        values["secondary_verified_at"] = now
    if conn.execute(update(instance_copies).where(instance_copies.c.instance_pk == pk).values(**values)).rowcount:
        return
    # indexed before copies were recorded: its record starts now, without a File Meta checksum
    mark_copies(conn, pk, "", "NONE")
    conn.execute(update(instance_copies).where(instance_copies.c.instance_pk == pk).values(**values))


def verify_copies(inst: CurrentInstance, locations: list[Location],
                  replaced: bool = False) -> tuple[list[Finding], dict[str, str]]:
    """Check ``locations``' copies of ``inst`` (a current or, ``replaced``, an old version); (the problems,
    the state of each copy found by location name: none for a location that could not be read)."""
    findings, states = [], {}
    for location in locations:
        problem = check_copy(location, inst)
        if problem is None:
            states[location.name] = _GOOD[location.name]
            continue
        findings.append(Finding(inst.sop_instance_uid, inst.study_instance_uid, location.name, *problem,
                                version=inst.version, replaced=replaced))
        if problem[0] != "UNREADABLE":  # an outage says nothing about the copy itself
            states[location.name] = problem[0]
    return findings, states


def verify(archive: Archive, db: Database, study_instance_uid: str | None = None,
           sample: int | None = None) -> tuple[int, list[Finding]]:
    """(instances checked, problems found); ``sample``: only that many, least recently checked first."""
    scope = db.read(partial(instances_of, study_instance_uid=study_instance_uid, limit=sample,
                            order_by_checked=sample is not None))
    findings: list[Finding] = []
    for inst in scope:
        found, states = verify_copies(inst, expected(archive, inst))
        findings += found
        db.writer.call(partial(_record, pk=inst.instance_pk, states=states, now=datetime.now(UTC)))
        for f in found:
            log.warning("fixity: %s copy of instance %s is %s: %s", f.location, f.sop_instance_uid, f.problem,
                        f.detail)
    return len(scope), findings


def _rebuild(target: Location, source: Location, inst: CurrentInstance, replaced: bool) -> Repair:
    def repair(ok: bool, detail: str) -> Repair:
        return Repair(inst.sop_instance_uid, target.name, source.name, ok, detail, inst.version, replaced)

    try:
        with source.open(inst.path) as reader:
            target.put(inst.path, reader, replace=True)
    except ArchiveUnavailable as exc:
        return repair(False, str(exc))
    problem = check_copy(target, inst)
    return repair(problem is None, "rebuilt and verified" if problem is None
                  else f"rebuilt copy is {problem[0]}: {problem[1]}")


def restore_copies(inst: CurrentInstance, locations: list[Location],
                   replaced: bool = False) -> tuple[list[Repair], dict[str, str]]:
    """Rebuild each of ``locations``' copies of ``inst`` (a current or, ``replaced``, an old version) that
    is not intact from one that is; (every attempt, the state of each copy now by location name)."""
    bad = {loc.name: check_copy(loc, inst) for loc in locations}
    intact = [loc for loc in locations if bad[loc.name] is None]
    repairs: list[Repair] = []
    states = {name: _GOOD[name] for name, problem in bad.items() if problem is None}
    for target in (loc for loc in locations if bad[loc.name] is not None):
        if not intact:
            repairs.append(Repair(inst.sop_instance_uid, target.name, "", False, "no intact copy to restore from",
                                  inst.version, replaced))
            continue
        repair = _rebuild(target, intact[0], inst, replaced)
        repairs.append(repair)
        if repair.ok:
            states[target.name] = _GOOD[target.name]
    return repairs, states


def restore(archive: Archive, db: Database, study_instance_uid: str | None = None) -> list[Repair]:
    """Rebuild every missing or damaged copy in scope from the other location; every attempt, ok or not."""
    repairs: list[Repair] = []
    for inst in db.read(partial(instances_of, study_instance_uid=study_instance_uid)):
        done, states = restore_copies(inst, expected(archive, inst))
        repairs += done
        db.writer.call(partial(_record, pk=inst.instance_pk, states=states, now=datetime.now(UTC)))
        for r in done:
            log.log(logging.INFO if r.ok else logging.ERROR, "restore: %s copy of instance %s from %s: %s",
                    r.location, r.sop_instance_uid, r.source or "-", r.detail)
    return repairs
