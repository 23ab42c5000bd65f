"""The copy to the secondary location: durable work in the outbox, verified by checksum.

At ingest, :func:`record_copies` runs in the C-STORE's transaction, after the
instance was indexed (:func:`~engine.domain.ingest.index_received`): it records
its copies (``instance_copies``: the File Meta checksum, primary PRESENT,
secondary PENDING) and enqueues one outbox row for :data:`DESTINATION`, so the
copy is owed exactly when the instance is indexed: a crash either loses both
(and the sender got no success) or keeps both.

The outbox worker delivers the row through :class:`ReplicationDestination`
(retried with backoff while the secondary is unavailable, in order per SOP
Instance UID): it streams the primary file to the secondary, reads the copy
back, compares both checksums with those recorded at ingest, and only then
marks the secondary VERIFIED. Doing it twice (a crash after the copy, before
the row was marked sent) writes the same object again under the same key:
nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, bindparam, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from engine.archive.archive import Archive, CurrentInstance, current_instance
from engine.archive.copy_tables import instance_copies
from engine.archive.objects import fixity
from engine.domain.instance_tables import instance_versions, instances
from engine.domain.instances import StoredFile
from engine.errors import ArchiveUnavailable, CopyMissing, MalformedDataset, RetryableDelivery
from engine.outbox.queue import enqueue
from engine.store.database import Database
from engine.store.fast import FastStatement

__all__ = [
    "DESTINATION", "MEDIA_TYPE", "ReplicationDestination", "mark_copies", "owe_missing_copies", "owe_rewritten_copy",
    "record_copies",
]  # fmt: skip

log = logging.getLogger(__name__)

#: The outbox destination of copies to the secondary (a ':' no configured destination name can have).
DESTINATION = "archive:secondary"
MEDIA_TYPE = "application/x.radbridge-archive-copy+json"


def _copies_upsert(insert: Any) -> FastStatement:
    """``INSERT ... ON CONFLICT (instance_pk) DO UPDATE`` of a copies record just stored, in ``insert``'s
    dialect: compiled once (it runs in every C-STORE's transaction)."""
    values: dict[str, Any] = {"meta_sha256": bindparam("meta_sha256"), "primary_state": "PRESENT",
              "secondary_state": bindparam("secondary_state"), "secondary_verified_at": None,
              "primary_removed_at": None, "checked_at": None}
    stmt = insert(instance_copies).values(instance_pk=bindparam("instance_pk"), **values)
    return FastStatement(stmt.on_conflict_do_update(index_elements=["instance_pk"], set_=values))


_UPSERT_COPIES = {"postgresql": _copies_upsert(postgresql.insert), "sqlite": _copies_upsert(sqlite.insert)}


def mark_copies(conn: Connection, instance_pk: int, meta_sha256: str, secondary_state: str) -> None:
    """Record (or reset, for a replacing version) the copies of ``instance_pk`` as just stored."""
    statement = _UPSERT_COPIES["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    statement.execute(conn, {"instance_pk": instance_pk, "meta_sha256": meta_sha256,
                             "secondary_state": secondary_state})


def record_copies(conn: Connection, instance_pk: int, sop_instance_uid: str, stored: StoredFile, meta_sha256: str,
                  replicate: bool) -> None:
    """For an instance (or version) just indexed: its copies' record and (``replicate``) the outbox row;
    the caller commits."""
    mark_copies(conn, instance_pk, meta_sha256, "PENDING" if replicate else "NONE")
    if replicate:
        _owe_copy(conn, instance_pk, sop_instance_uid, stored.sha256, stored.path, stored.received_at)


def _owe_copy(conn: Connection, pk: int, sop_instance_uid: str, sha256: str, path: str, now: datetime) -> None:
    payload = json.dumps({"instance_pk": pk, "sha256": sha256, "path": path}).encode()
    enqueue(conn, channel="archive", destination=DESTINATION, payload=payload, media_type=MEDIA_TYPE,
            ordering_key=sop_instance_uid, now=now)


def owe_rewritten_copy(conn: Connection, instance_pk: int, now: datetime) -> bool:
    """After a rewrite (reconciliation, ``studies link``, a PIR correction) pointed ``instance_pk`` at a
    new file in the primary: its primary copy is PRESENT again and, when copies go to a secondary, a
    copy of the new version is owed (PENDING, queued in the same transaction as the repointing).
    True when a copy was queued. The File Meta checksum stays: a rewrite keeps the File Meta bytes.
    """
    c = instance_copies.c
    row = conn.execute(
        select(instances.c.sop_instance_uid, instances.c.sha256, instances.c.path, c.secondary_state)
        .join(instance_copies, c.instance_pk == instances.c.id).where(instances.c.id == instance_pk)
    ).first()
    if row is None:  # indexed before copies were recorded: fixity starts its record, backfill owes the copy
        return False
    owed = bool(row.secondary_state != "NONE")
    values: dict[str, object] = {"primary_state": "PRESENT", "primary_removed_at": None, "checked_at": None}
    if owed:
        values.update(secondary_state="PENDING", secondary_verified_at=None)
    conn.execute(update(instance_copies).where(c.instance_pk == instance_pk).values(**values))
    if owed:
        _owe_copy(conn, instance_pk, row.sop_instance_uid, row.sha256, row.path, now)
    return owed


def owe_missing_copies(conn: Connection, now: datetime, limit: int = 1000) -> int:
    """Queue copies for up to ``limit`` instances that have none owed (stored before a secondary was
    configured, or before copies were recorded); return how many. Their File Meta checksum is unknown
    (empty): their copies are checked against the dataset checksum."""
    c = instance_copies.c
    rows = conn.execute(
        select(instances.c.id, instances.c.sop_instance_uid, instances.c.sha256, instances.c.path, c.instance_pk)
        .outerjoin(instance_copies, c.instance_pk == instances.c.id)
        .where(or_(c.instance_pk.is_(None), c.secondary_state == "NONE")).order_by(instances.c.id).limit(limit)
    ).all()
    for row in rows:
        if row.instance_pk is None:
            mark_copies(conn, int(row.id), "", "PENDING")
        else:
            conn.execute(update(instance_copies).where(c.instance_pk == row.id).values(secondary_state="PENDING"))
        _owe_copy(conn, int(row.id), row.sop_instance_uid, row.sha256, row.path, now)
    return len(rows)


def _mark_verified(conn: Connection, instance_pk: int, sha256: str, now: datetime) -> None:
    """VERIFIED, unless a newer version was indexed meanwhile (its own copy is owed and pending)."""
    still_current = exists().where(instances.c.id == instance_pk, instances.c.sha256 == sha256)
    conn.execute(update(instance_copies).where(instance_copies.c.instance_pk == instance_pk, still_current)
                 .values(secondary_state="VERIFIED", secondary_verified_at=now))


@dataclass(frozen=True, slots=True)
class _Job:
    instance_pk: int
    sha256: str
    path: str


class ReplicationDestination:
    """The outbox destination that copies one instance to the secondary and verifies it."""

    name = DESTINATION

    def __init__(self, archive: Archive, db: Database) -> None:
        assert archive.secondary is not None
        self.archive = archive
        self.db = db

    async def send(self, payload: bytes, media_type: str) -> str:
        """Copy and verify in a thread; the outcome as text, or RetryableDelivery."""
        return await asyncio.to_thread(self.copy, _Job(**json.loads(payload)))

    async def close(self) -> None:
        """Nothing to release (boto3 clients close with the process)."""

    def _copy_old_version(self, job: _Job) -> str:
        """Copy a version replaced before its copy was made (``instance_versions`` keeps it): the
        history the primary holds is in the secondary too. Checked against its dataset checksum."""
        secondary = self.archive.secondary
        assert secondary is not None
        if not self.db.read(partial(_is_old_version, job=job)):
            return "superseded (no such version kept)"
        try:
            with self.archive.primary.open(job.path) as source:
                secondary.put(job.path, source, replace=True)
            found = fixity(secondary, job.path)
        except CopyMissing:
            return "superseded (the old version's file is not in the primary)"
        except (ArchiveUnavailable, MalformedDataset) as exc:
            raise RetryableDelivery(f"copy of an old version to {secondary.name}: {exc}",
                                    f"copy of an old version to {secondary.name}: {type(exc).__name__}") from exc
        if found.sha256 != job.sha256:
            raise RetryableDelivery(*[f"copy of an old version in {secondary.name} does not match its checksum"] * 2)
        self.db.writer.call(partial(_mark_old_verified, job=job))
        return f"old version copied to {secondary.describe()} and verified"

    def _current(self, job: _Job) -> CurrentInstance | None:
        inst = self.db.read(lambda conn: current_instance_by_pk(conn, job.instance_pk))
        return inst if inst is not None and inst.sha256 == job.sha256 and inst.path == job.path else None

    def copy(self, job: _Job) -> str:
        """Copy the primary file to the secondary, read it back, compare checksums, mark VERIFIED."""
        secondary = self.archive.secondary
        assert secondary is not None
        inst = self._current(job)
        if inst is None:  # replaced since: the newer version has its own row; this one is history
            return self._copy_old_version(job)
        try:
            with self.archive.primary.open(inst.path) as source:
                secondary.put(inst.path, source, replace=True)
            found = fixity(secondary, inst.path)
        except (ArchiveUnavailable, MalformedDataset) as exc:
            raise RetryableDelivery(f"copy to {secondary.name}: {exc}",
                                    f"copy to {secondary.name}: {type(exc).__name__}") from exc
        if found.sha256 != inst.sha256 or inst.meta_sha256 not in (None, found.meta_sha256):
            raise RetryableDelivery(*[f"copy in {secondary.name} does not match the checksums recorded at ingest"
                                      " (is the primary copy intact? radbridge archive verify)"] * 2)
        self.db.writer.call(partial(_mark_verified, instance_pk=inst.instance_pk, sha256=inst.sha256,
                                    now=datetime.now(UTC)))
        return f"copied to {secondary.describe()} and verified"


def _mark_old_verified(conn: Connection, job: _Job) -> None:
    """The replaced version's secondary copy is made and checked (fixity expects it from now on)."""
    v = instance_versions.c
    conn.execute(update(instance_versions).where(v.instance_pk == job.instance_pk, v.path == job.path,
                                                 v.sha256 == job.sha256).values(secondary_state="VERIFIED"))


def _is_old_version(conn: Connection, job: _Job) -> bool:
    v = instance_versions.c
    found = conn.execute(select(v.id).where(v.instance_pk == job.instance_pk, v.path == job.path,
                                            v.sha256 == job.sha256).limit(1)).first()
    return found is not None


def current_instance_by_pk(conn: Connection, instance_pk: int) -> CurrentInstance | None:
    """:func:`current_instance` by the index row's id."""
    uid = conn.execute(select(instances.c.sop_instance_uid).where(instances.c.id == instance_pk)).scalar()
    return current_instance(conn, uid) if uid is not None else None
