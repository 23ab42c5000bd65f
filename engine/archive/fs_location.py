"""A storage location on a local or mounted file system, behind the Location interface.

Writes go through :class:`~engine.archive.location.ArchiveLocation`: a temporary
name in ``.incoming``, fsync, then a no-clobber link (``replace=False``) or an
atomic rename over the old file (``replace=True``, a repaired copy), and the
directory fsynced. A reader never sees a half-written object.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from engine.archive.location import INCOMING, ArchiveLocation
from engine.archive.objects import ObjectStat
from engine.errors import ArchiveUnavailable, CopyMissing

__all__ = ["FileLocation"]

#: Directories under the root that hold no archived instance.
_NOT_INSTANCES = frozenset({INCOMING, ".quarantine"})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _error(what: str, exc: OSError) -> ArchiveUnavailable:
    return ArchiveUnavailable(f"{what}: {errno.errorcode.get(exc.errno or 0, type(exc).__name__)}")


class FileLocation:
    """A directory tree; keys are relative paths inside it (checked UIDs: no ``..``)."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self._files = ArchiveLocation(name, root)

    def describe(self) -> str:
        """The directory."""
        return str(self.root)

    def check(self) -> None:
        """Create the directory (0700) and its ``.incoming``, and prove a file can be written there."""
        self._files.prepare()
        probe = self._files.incoming / f".probe-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise _error(f"archive location {self.name} ({self.root}) is not writable", exc) from exc

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"not a relative key: {key!r}")
        return self.root / key

    def put(self, key: str, body: BinaryIO, *, head: bytes = b"", replace: bool = True) -> bool:
        """Durably store ``key`` (see the module docstring)."""
        final = self._path(key)
        try:
            self._files.incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise _error(f"archive location {self.name} cannot take a file", exc) from exc
        staged = self._files.stage(head, body)
        if not replace:
            _, created = self._files.place(staged, [key])
            return created
        try:
            self._files._into_place(final, lambda: os.replace(staged.path, final))
            _fsync_dir(final.parent)
        except OSError as exc:
            self._files.discard(staged.path)
            raise _error(f"archive location {self.name} cannot name a file", exc) from exc
        return True

    def open(self, key: str) -> BinaryIO:
        """The file, opened for reading."""
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise CopyMissing(f"{self.name}: {key} is missing") from exc
        except OSError as exc:
            raise _error(f"archive location {self.name} cannot be read", exc) from exc

    def stat(self, key: str) -> ObjectStat | None:
        """Its size, or None."""
        try:
            return ObjectStat(os.stat(self._path(key)).st_size)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error(f"archive location {self.name} cannot be read", exc) from exc

    def delete(self, key: str) -> None:
        """Unlink it and fsync its directory, so the removal survives a crash as the index says; then
        remove its series and study directories if that emptied them."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _error(f"archive location {self.name} cannot remove a file", exc) from exc
        self._files.prune(path.parent)

    def iterate(self, prefix: str = "") -> Iterator[str]:
        """Every file under ``prefix``, as keys, skipping ``.incoming`` and the quarantine."""
        for dirpath, dirnames, filenames in os.walk(self.root / prefix if prefix else self.root):
            here = Path(dirpath).relative_to(self.root)
            if here == Path("."):
                dirnames[:] = [d for d in dirnames if d not in _NOT_INSTANCES]
            for filename in sorted(filenames):
                yield (here / filename).as_posix()
