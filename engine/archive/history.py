"""Fixity of the archive's history: the old versions each instance keeps (``instance_versions``).

A version replaced by a new one (a resend with other content, a reconciliation, a PIR
correction) keeps its file in both locations: in the primary unless it had been tiered
away when it was replaced, in the secondary once its copy was made (before it was
replaced, or by the copy still owed then: :mod:`engine.archive.replication`). Its row
records where its copies stand (:func:`~engine.archive.copy_tables.replaced_version_copies`
when replaced, then what fixity finds); a row replaced before that was recorded (NULL
states) is expected in the primary and, when there is one, in the secondary.

:func:`verify_history` and :func:`restore_history` do for old versions what
:func:`~engine.archive.fixity.verify` and :func:`~engine.archive.fixity.restore` do for
current ones, reporting each version by its number (1 as received). An old version is
intact when its dataset hashes to the checksum recorded for it (its File Meta checksum
was not kept).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, func, select, update

from engine.archive.archive import Archive, CurrentInstance
from engine.archive.fixity import Finding, Repair, restore_copies, verify_copies
from engine.archive.objects import Location
from engine.domain.instance_tables import instance_versions, instances
from engine.domain.tables import studies
from engine.store.database import Database

__all__ = ["OldVersion", "expected_history", "old_versions", "restore_history", "verify_history"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OldVersion:
    """One replaced version (``instance_versions.id`` = ``pk``) as the checks of current copies see one."""

    pk: int
    copy: CurrentInstance  # its path, size, checksum, number and copy states (no File Meta checksum)


def _number() -> Any:
    """The version's number: 1 + how many versions of its instance were replaced before it."""
    earlier = instance_versions.alias("earlier")
    return (select(func.count()).where(earlier.c.instance_pk == instance_versions.c.instance_pk,
                                       earlier.c.id <= instance_versions.c.id).scalar_subquery())


def old_versions(conn: Connection, study_instance_uid: str | None = None, limit: int | None = None,
                 order_by_checked: bool = False) -> list[OldVersion]:
    """The old versions of one study (or all), by instance then age; least recently checked first if asked."""
    v = instance_versions.c
    query = (select(v.id, v.instance_pk, instances.c.sop_instance_uid, studies.c.study_instance_uid, v.path, v.size,
                    v.sha256, v.primary_state, v.secondary_state, _number().label("number"))
             .join(instances, instances.c.id == v.instance_pk).join(studies, studies.c.id == instances.c.study_pk))
    if study_instance_uid is not None:
        query = query.where(studies.c.study_instance_uid == study_instance_uid)
    order = (v.checked_at.is_not(None), v.checked_at, v.id) if order_by_checked else (v.instance_pk, v.id)
    query = query.order_by(*order)
    if limit is not None:
        query = query.limit(limit)
    return [OldVersion(int(r.id), CurrentInstance(
        int(r.instance_pk), r.sop_instance_uid, r.study_instance_uid, "", r.path, int(r.size), r.sha256, None,
        r.primary_state or "PRESENT", r.secondary_state or "", int(r.number))) for r in conn.execute(query)]


def expected_history(archive: Archive, version: OldVersion) -> list[Location]:
    """The locations that should hold an intact copy of the old version now."""
    copy = version.copy
    out = [] if copy.primary_state == "TIERED" else [archive.primary]
    # "" (replaced before states were recorded): expected wherever there is a secondary
    if archive.secondary is not None and copy.secondary_state not in ("NONE", "PENDING"):
        out.append(archive.secondary)
    return out


def _record(conn: Connection, pk: int, states: dict[str, str], now: datetime) -> None:
    values: dict[str, object] = {"checked_at": now}
    values.update({f"{name}_state": state for name, state in states.items()})
    conn.execute(update(instance_versions).where(instance_versions.c.id == pk).values(**values))


def verify_history(archive: Archive, db: Database, study_instance_uid: str | None = None,
                   sample: int | None = None) -> tuple[int, list[Finding]]:
    """(old versions checked, problems found); ``sample``: only that many, least recently checked first."""
    scope = db.read(partial(old_versions, study_instance_uid=study_instance_uid, limit=sample,
                            order_by_checked=sample is not None))
    findings: list[Finding] = []
    for version in scope:
        found, states = verify_copies(version.copy, expected_history(archive, version), replaced=True)
        findings += found
        db.writer.call(partial(_record, pk=version.pk, states=states, now=datetime.now(UTC)))
        for f in found:
            log.warning("fixity: %s copy of version %d of instance %s is %s: %s", f.location, f.version,
                        f.sop_instance_uid, f.problem, f.detail)
    return len(scope), findings


def restore_history(archive: Archive, db: Database, study_instance_uid: str | None = None) -> list[Repair]:
    """Rebuild every missing or damaged copy of an old version in scope from the other location."""
    repairs: list[Repair] = []
    for version in db.read(partial(old_versions, study_instance_uid=study_instance_uid)):
        done, states = restore_copies(version.copy, expected_history(archive, version), replaced=True)
        repairs += done
        db.writer.call(partial(_record, pk=version.pk, states=states, now=datetime.now(UTC)))
        for r in done:
            log.log(logging.INFO if r.ok else logging.ERROR, "restore: %s copy of version %d of instance %s"
                    " from %s: %s", r.location, r.version, r.sop_instance_uid, r.source or "-", r.detail)
    return repairs
