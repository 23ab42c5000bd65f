"""How a rewrite of a stored instance (a late order, ``studies link``, a PIR correction) uses the archive.

It reads the current version as forwarding does
(:mod:`channels.dicom.forward_source`), never trusting a copy it has not checked:

- the fast path is the primary file itself, when the primary is a local directory
  and the copy is not tiered away: it is read once, and the caller checks the
  bytes it streamed against the checksums recorded at ingest (:meth:`RewriteIO.intact`)
  before the rewritten file is given a name;
- otherwise (tiered, missing, damaged, or the primary is an object store) a scratch
  copy of the first intact copy (:func:`~engine.archive.archive.copy_current`:
  primary, else secondary, every byte checked) in the primary's local
  ``.incoming``, removed after (and by the start-up clean-up / sweep after a crash).

The rewritten version is always written to the primary (:attr:`RewriteIO.primary`,
a directory or an object store), whose index transaction then owes its copy to the
secondary (:func:`~engine.archive.replication.owe_rewritten_copy`). A tiered instance
thus comes back to the primary as its corrected version, and leaves it again at the
next tiering run once that version's secondary copy is verified: tiering picks by
``received_at``, which a rewrite keeps, so the primary does not grow back for good.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.archive.archive import Archive, CurrentInstance, archive_from_config, copy_current
from engine.archive.fs_location import FileLocation
from engine.archive.location import ArchiveLocation
from engine.archive.s3_primary import primary_location
from engine.config.models import EngineConfig
from engine.errors import ArchiveUnavailable

__all__ = ["RewriteIO"]


@dataclass(frozen=True, slots=True)
class RewriteIO:
    """The archive to read current versions from, and the primary location rewritten files go to."""

    archive: Archive
    primary: ArchiveLocation

    @classmethod
    def from_config(cls, config: EngineConfig) -> RewriteIO:
        """Both locations of ``archive:``; writes go where C-STORE writes (a directory or ``primary_s3``)."""
        return cls(archive_from_config(config), primary_location(config))

    @classmethod
    def local(cls, primary: ArchiveLocation, secondary: FileLocation | None = None) -> RewriteIO:
        """A directory primary (and optional directory secondary): tests and tools."""
        return cls(Archive(FileLocation(primary.name, primary.root), secondary), primary)

    def direct(self, inst: CurrentInstance) -> Path | None:
        """The primary file to read in place (checked by the caller), or None: read :meth:`verified_copy`."""
        primary = self.archive.primary
        if not isinstance(primary, FileLocation) or inst.primary_state in ("TIERING", "TIERED"):
            return None
        path = primary.root / inst.path
        return path if path.is_file() else None

    @staticmethod
    def intact(inst: CurrentInstance, meta: bytes, dataset_sha256: str) -> bool:
        """True when a copy's File Meta bytes and dataset hash are those recorded at ingest."""
        meta_ok = not inst.meta_sha256 or hashlib.sha256(meta).hexdigest() == inst.meta_sha256
        return meta_ok and dataset_sha256 == inst.sha256

    @contextmanager
    def verified_copy(self, inst: CurrentInstance) -> Iterator[Path]:
        """A local scratch file holding the first intact copy of ``inst``, removed after.

        Raises :class:`~engine.errors.CopyMissing` when no location holds an intact copy and
        :class:`~engine.errors.ArchiveUnavailable` when a location could not be read (or the
        scratch file not written).
        """
        scratch = self.primary.incoming / f"{uuid.uuid4().hex}.rewrite"
        try:
            try:
                self.primary.incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w+b") as out:
                    copy_current(self.archive, inst, out)
            except OSError as exc:
                raise ArchiveUnavailable(f"no scratch file for a rewrite: {exc.strerror}") from exc
            yield scratch
        finally:
            scratch.unlink(missing_ok=True)
