"""The two storage locations of the archive, built from ``archive:``, and how an instance is read back.

:func:`archive_from_config` builds the primary (``archive.primary``, a directory,
or ``archive.primary_s3``, an object store)
and the optional secondary (``archive.secondary``: a directory or
``s3://bucket[/prefix]``). :func:`current_instance` says where the current
version of an instance is and what its checksums are; :func:`open_current`
opens it from the primary, falling back to the secondary when the primary copy
was tiered away, is missing or cannot be read; :func:`copy_current` also checks
every byte against the recorded checksums while copying, trying the other
location when a copy does not verify. Forwarding, export and restore read
through these.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy import Connection, Row, Select, select

from engine.archive.copy_tables import instance_copies
from engine.archive.fs_location import FileLocation
from engine.archive.objects import CHUNK, Location, read_head
from engine.archive.part10 import dataset_offset
from engine.archive.s3_location import S3Location, s3_client
from engine.config.models import ArchiveS3Config, EngineConfig
from engine.domain.instance_tables import instances
from engine.domain.tables import series, studies
from engine.errors import ArchiveUnavailable, CopyMissing, MalformedDataset

__all__ = [
    "Archive", "CurrentInstance", "archive_from_config", "copy_current", "current_instance", "location_from_spec",
    "open_current", "reading_order",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Archive:
    """The primary location and, when configured, the secondary."""

    primary: Location
    secondary: Location | None = None

    def locations(self) -> dict[str, Location]:
        """By name: ``primary`` and (if any) ``secondary``."""
        found = {"primary": self.primary}
        if self.secondary is not None:
            found["secondary"] = self.secondary
        return found


def location_from_spec(name: str, spec: str, s3: ArchiveS3Config) -> Location:
    """A directory, or ``s3://bucket[/prefix]`` (the kind was checked when the configuration loaded)."""
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[len("s3://"):].partition("/")
        return S3Location(name, bucket, prefix, s3_client(s3.endpoint_url, s3.region))
    from pathlib import Path

    return FileLocation(name, Path(spec))


def archive_from_config(config: EngineConfig) -> Archive:
    """The archive ``config`` describes (nothing is touched: :meth:`Location.check` does that)."""
    s3, spec = config.archive.s3, config.archive.secondary
    primary = location_from_spec("primary", config.archive.primary_s3 or str(config.archive_dir()), s3)
    return Archive(primary, location_from_spec("secondary", spec, s3) if spec else None)


@dataclass(frozen=True, slots=True)
class CurrentInstance:
    """The indexed, current version of one instance and the state of its copies."""

    instance_pk: int
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    path: str
    size: int
    sha256: str
    meta_sha256: str | None  # None for instances indexed before copies were recorded
    primary_state: str
    secondary_state: str
    version: int = 1  # its number: 1 as received, then one more per replacement or rewrite


def _select() -> Select[Any]:
    return (
        select(instances.c.id, instances.c.sop_instance_uid, studies.c.study_instance_uid,
               series.c.series_instance_uid, instances.c.path, instances.c.size, instances.c.sha256,
               instance_copies.c.meta_sha256, instance_copies.c.primary_state, instance_copies.c.secondary_state,
               instances.c.versions)
        .join(studies, studies.c.id == instances.c.study_pk)
        .join(series, series.c.id == instances.c.series_pk)
        .outerjoin(instance_copies, instance_copies.c.instance_pk == instances.c.id)
    )  # fmt: skip


def _current(row: Row[Any]) -> CurrentInstance:
    r = row._mapping
    return CurrentInstance(
        int(r["id"]), r["sop_instance_uid"], r["study_instance_uid"], r["series_instance_uid"], r["path"],
        int(r["size"]), r["sha256"], r["meta_sha256"] or None, r["primary_state"] or "PRESENT",
        r["secondary_state"] or "NONE", int(r["versions"]),
    )  # fmt: skip


def current_instance(conn: Connection, sop_instance_uid: str) -> CurrentInstance | None:
    """The current version of ``sop_instance_uid``, or None when it is not indexed."""
    query = _select().where(instances.c.sop_instance_uid == sop_instance_uid)
    row = conn.execute(query).first()
    return _current(row) if row is not None else None


def instances_of(conn: Connection, study_instance_uid: str | None = None, limit: int | None = None,
                 order_by_checked: bool = False) -> list[CurrentInstance]:
    """The current instances of one study (or all), by id; least recently checked first if asked."""
    query = _select()
    if study_instance_uid is not None:
        query = query.where(studies.c.study_instance_uid == study_instance_uid)
    if order_by_checked:
        query = query.order_by(instance_copies.c.checked_at.is_not(None),
                               instance_copies.c.checked_at, instances.c.id)
    else:
        query = query.order_by(instances.c.id)
    if limit is not None:
        query = query.limit(limit)
    return [_current(r) for r in conn.execute(query)]


def reading_order(archive: Archive, inst: CurrentInstance) -> list[Location]:
    """Where to read ``inst`` from, best first: the primary unless tiered away, then the secondary."""
    order = [] if inst.primary_state == "TIERED" else [archive.primary]
    if archive.secondary is not None and inst.secondary_state != "NONE":
        order.append(archive.secondary)
    return order


def open_current(archive: Archive, inst: CurrentInstance) -> BinaryIO:
    """A reader of the stored Part 10 file of ``inst``, from the first location that has it.

    Raises :class:`CopyMissing` when no location has it, or the last location's
    :class:`ArchiveUnavailable` when none can be read.
    """
    last: ArchiveUnavailable = CopyMissing(f"{inst.sop_instance_uid}: no location holds a copy")
    for location in reading_order(archive, inst):
        try:
            return location.open(inst.path)
        except ArchiveUnavailable as exc:
            last = exc
    raise last


def _verified_chunks(reader: BinaryIO, inst: CurrentInstance) -> Iterator[bytes]:
    """The bytes of ``reader``, raising MalformedDataset at the end if they do not match ``inst``."""
    head = read_head(reader)
    offset = dataset_offset(head)
    meta, body = hashlib.sha256(head[:offset]), hashlib.sha256(head[offset:])
    yield head
    while chunk := reader.read(CHUNK):
        body.update(chunk)
        yield chunk
    if body.hexdigest() != inst.sha256 or (inst.meta_sha256 not in (None, meta.hexdigest())):
        raise MalformedDataset("the copy does not match the checksums recorded at ingest")


def copy_current(archive: Archive, inst: CurrentInstance, out: BinaryIO) -> str:
    """Write the verified Part 10 bytes of ``inst`` to ``out``; the name of the location read.

    ``out`` must be seekable: a copy that turns out damaged is truncated and the next
    location tried. Raises :class:`CopyMissing` when every location was read and none holds
    an intact copy (missing or damaged everywhere), :class:`ArchiveUnavailable` when some
    location could not be read at all (a later attempt may succeed).
    """
    problems = []
    unreachable = False
    for location in reading_order(archive, inst):
        out.seek(0)
        out.truncate()
        try:
            with location.open(inst.path) as reader:
                for chunk in _verified_chunks(reader, inst):
                    out.write(chunk)
            return location.name
        except (ArchiveUnavailable, MalformedDataset) as exc:
            unreachable = unreachable or type(exc) is ArchiveUnavailable
            problems.append(f"{location.name}: {exc}")
    out.seek(0)
    out.truncate()
    error = ArchiveUnavailable if unreachable else CopyMissing
    raise error(f"{inst.sop_instance_uid}: no intact copy ({'; '.join(problems) or 'no location'})")
