"""The primary location in an S3-compatible object store, for the C-STORE path (``archive.primary_s3``).

Several engine processes can then share one archive. The receive path stays as for a
directory: pynetdicom spools each dataset into ``<archive.primary>/.incoming`` (a local
directory), the Part 10 file is staged there, then :meth:`S3PrimaryLocation.place` PUTs
it under the first of its names that is free (a conditional PUT, ``If-None-Match: *``:
an object is never overwritten, even by another engine). C-STORE success still waits for
the PUT to have returned (the store's durability) and the index row to be committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from engine.archive.location import ArchiveLocation, StagedFile
from engine.archive.s3_location import S3Location, s3_client
from engine.config.models import EngineConfig
from engine.errors import ArchiveUnavailable

__all__ = ["S3PrimaryLocation", "primary_location"]

log = logging.getLogger(__name__)


class S3PrimaryLocation(ArchiveLocation):
    """Stages under the local ``spool_root`` like a directory location; places into ``objects``.

    :meth:`path` of a placed name is the relative object key (not an absolute path), which
    :meth:`discard` removes from the store; absolute paths are local temporary files.
    """

    def __init__(self, objects: S3Location, spool_root: Path) -> None:
        super().__init__(objects.name, spool_root)
        self.objects = objects

    def prepare(self) -> int:
        """The local spool as for a directory, and the store must take an object now."""
        removed = super().prepare()
        self.objects.check()
        return removed

    def place(self, staged: StagedFile, names: Sequence[str]) -> tuple[str, bool]:
        """PUT ``staged`` under the first of ``names`` not taken (see ArchiveLocation.place)."""
        try:
            for name in names:
                with open(staged.path, "rb") as body:
                    if self.objects.put(name, body, replace=False):
                        return name, True
            return names[-1], False
        except OSError as exc:
            raise ArchiveUnavailable(f"archive location {self.name}: staged file unreadable: {exc}") from exc
        finally:
            super().discard(staged.path)

    def open_placed(self, relative: str) -> BinaryIO:
        """A streaming reader of the object :meth:`place` put under ``relative`` (there is no local file)."""
        return self.objects.open(relative)

    def path(self, relative: str) -> Path:
        """The object key (relative): what :meth:`discard` deletes from the store."""
        return Path(PurePosixPath(relative))

    def discard(self, path: Path) -> None:
        """A local temporary file (absolute) or a placed object (a key); never raises."""
        if path.is_absolute():
            super().discard(path)
            return
        try:
            self.objects.delete(path.as_posix())
        except ArchiveUnavailable as exc:
            log.error("archive location %s: cannot remove an object: %s", self.name, exc)


def primary_location(config: EngineConfig) -> ArchiveLocation:
    """Where C-STORE writes: ``archive.primary_s3`` if set (spooling in ``archive.primary``), else the directory."""
    spec = config.archive.primary_s3
    if not spec:
        return ArchiveLocation("primary", config.archive_dir())
    bucket, _, prefix = spec[len("s3://"):].partition("/")
    s3 = config.archive.s3
    return S3PrimaryLocation(S3Location("primary", bucket, prefix, s3_client(s3.endpoint_url, s3.region)),
                             config.archive_dir())
