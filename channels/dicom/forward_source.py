"""Where forwarding reads an instance: the archive's current copy, checked against its checksums.

:class:`ForwardSource` is the one door between the DICOM destination and the
archive (:mod:`engine.archive.archive`):

- :meth:`ForwardSource.locate` reads what the index says about the instance now
  (its current version, checksums, the state of both copies);
- :meth:`ForwardSource.primary_file` is the fast path: the primary file itself,
  sent straight from disk, with the checksum recorded at ingest
  (:class:`~channels.dicom.store_link.Fixity`) verified while it is sent (the
  last fragment is held back until the bytes are known to match, so a damaged
  copy never reaches the peer complete);
- :meth:`ForwardSource.verified_copy` is the fallback when the primary copy was
  tiered away, is missing, is in an object store or did not match: the archive's
  :func:`~engine.archive.archive.copy_current` (primary, else secondary, every
  byte checked) into a scratch file in the primary's ``.incoming``, removed
  after the send (and by the start-up clean-up / sweep after a crash).

No intact copy anywhere is a :class:`~engine.errors.PermanentDelivery` naming
what was found in each location (a dead letter an operator sees in ``outbox
list``; ``archive restore`` then ``outbox replay``); a location that cannot be
reached is retryable.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, select

from engine.archive.archive import Archive, CurrentInstance, copy_current
from engine.archive.copy_tables import instance_copies
from engine.archive.fs_location import FileLocation
from engine.archive.part10 import dataset_offset
from engine.domain.instance_tables import instances
from engine.errors import ArchiveUnavailable, CopyMissing, MalformedDataset, PermanentDelivery, RetryableDelivery
from engine.store.fast import FastStatement, first_row

from .associations import Pair
from .store_link import Fixity, SourceDamaged

__all__ = ["ForwardSource", "InstanceFile", "Located", "check_file"]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class InstanceFile:
    """A Part 10 file to send; ``fixity`` is set when it still has to be checked while it is read."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    fixity: Fixity | None = None

    @property
    def pair(self) -> Pair:
        return self.sop_class_uid, self.transfer_syntax_uid


@dataclass(frozen=True, slots=True)
class Located:
    """The current version of an instance (for the archive) and its SOP class and transfer syntax."""

    current: CurrentInstance
    sop_class_uid: str
    transfer_syntax_uid: str

    def file(self, path: Path, fixity: Fixity | None) -> InstanceFile:
        uid = self.current.sop_instance_uid
        return InstanceFile(path, self.sop_class_uid, uid, self.transfer_syntax_uid, fixity)


# On the raw cursor: this runs once an image on the forwarding path.
_INSTANCE_ROW = FastStatement(
    select(instances.c.id, instances.c.path, instances.c.size, instances.c.sha256, instances.c.sop_class_uid,
           instances.c.sop_instance_uid, instances.c.transfer_syntax_uid, instance_copies.c.meta_sha256,
           instance_copies.c.primary_state, instance_copies.c.secondary_state)
    .outerjoin(instance_copies, instance_copies.c.instance_pk == instances.c.id)
    .where(instances.c.id == bindparam("pk"))
)  # fmt: skip


def _located(conn: Connection, pk: int) -> Located | None:
    r = first_row(_INSTANCE_ROW, conn, {"pk": pk})
    if r is None:
        return None
    # Study and series UIDs are not needed to read a copy: the path names it.
    current = CurrentInstance(int(r.id), r.sop_instance_uid, "", "", r.path, int(r.size), r.sha256,
                              r.meta_sha256 or None, r.primary_state or "PRESENT", r.secondary_state or "NONE")
    return Located(current, r.sop_class_uid, r.transfer_syntax_uid)


def check_file(path: Path, fixity: Fixity) -> None:
    """Raise :class:`SourceDamaged` unless the dataset of the Part 10 file ``path`` matches ``fixity``."""
    try:
        with open(path, "rb") as f:
            f.seek(dataset_offset(f.read(1 << 16)))
            digest, size = hashlib.sha256(), 0
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except MalformedDataset as exc:
        raise SourceDamaged(f"File Meta Information unreadable: {exc}") from exc
    if size != fixity.size or digest.hexdigest() != fixity.sha256:
        raise SourceDamaged("the dataset does not match the checksum recorded at ingest")


class ForwardSource:
    """Reads the instances a destination forwards from ``archive`` (see the module docstring)."""

    def __init__(self, archive: Archive, db: Any, scratch: Path) -> None:
        """``scratch``: the local directory of temporary files (the primary's ``.incoming``)."""
        self._archive = archive
        self._db = db
        self._scratch = scratch
        primary = archive.primary
        self._primary_root = primary.root if isinstance(primary, FileLocation) else None

    def locate(self, instance_pk: int) -> Located | None:
        """The current version of ``instance_pk``, or None when it is no longer indexed."""
        found: Located | None = self._db.read(partial(_located, pk=instance_pk))
        return found

    def primary_file(self, found: Located) -> InstanceFile | None:
        """The primary file to send directly (checked while sent), or None: read through the archive."""
        inst = found.current
        if self._primary_root is None or inst.primary_state == "TIERED":
            return None
        path = self._primary_root / inst.path
        if not path.is_file():
            return None
        return found.file(path, Fixity(inst.size, inst.sha256))

    @contextmanager
    def verified_copy(self, found: Located) -> Iterator[InstanceFile]:
        """A scratch copy of the instance from the first location holding an intact one, removed after."""
        scratch = self._scratch / f"{uuid.uuid4().hex}.forward"
        try:
            try:
                fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                raise RetryableDelivery(*[f"no scratch file for forwarding: {exc.strerror}"] * 2) from exc
            with os.fdopen(fd, "w+b") as out:
                self._copy(found.current, out)
            yield found.file(scratch, None)
        finally:
            scratch.unlink(missing_ok=True)

    def _copy(self, inst: CurrentInstance, out: Any) -> None:
        try:
            copy_current(self._archive, inst, out)
        except CopyMissing as exc:
            raise PermanentDelivery(f"instance {inst.sop_instance_uid}: no intact copy in the archive ({exc});"
                                    " radbridge archive verify/restore, then outbox replay",
                                    "no intact copy in the archive") from exc
        except ArchiveUnavailable as exc:
            raise RetryableDelivery(f"instance {inst.sop_instance_uid}: archive unavailable: {exc}",
                                    "archive unavailable") from exc
        except OSError as exc:  # the scratch file could not be written (the local disk is full)
            raise RetryableDelivery(*[f"no scratch copy for forwarding: {exc.strerror}"] * 2) from exc
