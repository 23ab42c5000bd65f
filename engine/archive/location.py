"""A storage location on a file system, and how a file gets into it durably.

A file enters in two steps, so that nothing half-written ever carries a final name:

1. :meth:`ArchiveLocation.stage` writes it under a temporary name in the
   location's ``.incoming`` directory (same file system), hashing as it goes,
   and fsyncs it. A body given as a :class:`FileTail` (new leading bytes, then
   another file from an offset on: a coerced image's new header and its pixel
   data as received) is copied by the kernel (``copy_file_range``) and hashed
   from a reused buffer. Any ``OSError`` (disk full, unwritable) removes the
   temporary file and raises :class:`~engine.errors.ArchiveUnavailable`.
   :meth:`ArchiveLocation.adopt` instead takes a file a receiver already wrote
   completely in ``.incoming`` (hashing as it wrote) and fsyncs it: no copy
   (or waits for the fsync :meth:`ArchiveLocation.flush_ahead` started).
2. :meth:`ArchiveLocation.place` gives it its final name with ``link(2)``, which
   never replaces an existing file (an indexed file is never overwritten, even
   by a racing sender), then fsyncs the directory (and any directory it had to
   create) and drops the temporary name.

:meth:`ArchiveLocation.prepare` (at start) removes whatever a crash left in
``.incoming``. Files are created 0600 and directories 0700 whatever the umask:
they hold PHI.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from engine.archive.flush import FlushAhead, fsync_file
from engine.errors import ArchiveUnavailable

__all__ = ["ArchiveLocation", "FileTail", "StagedFile", "hash_range", "read_tail"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_FILE_MODE = 0o600
_DIR_MODE = 0o700
INCOMING = ".incoming"


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A complete, fsynced file under a temporary name; ``size``/``sha256`` cover the copied body."""

    path: Path
    size: int
    sha256: str


class FileTail:
    """A body made of ``head`` followed by ``source`` from byte ``offset`` to its end (``source`` is a
    complete file, opened for reading, that nobody writes any more)."""

    def __init__(self, head: bytes, source: BinaryIO, offset: int) -> None:
        self.head = head
        self.source = source
        self.offset = offset


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy_tail(source: int, out: int, offset: int, digest: Any) -> int:
    """Append ``source`` from ``offset`` on to ``out``, hashing it into ``digest``; how many bytes.

    The kernel copies (``copy_file_range``, no user-space copy) while the bytes are hashed from
    a reused buffer; where the kernel cannot copy between these files, the buffer is written.
    """
    buf = _buffer()
    view = memoryview(buf)
    at = offset
    kernel = True
    while n := os.preadv(source, [buf], at):
        digest.update(view[:n])
        if kernel:
            try:
                kernel = _copy_range(source, out, at, n)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                kernel = False
        if not kernel:
            _write_all(out, view[:n].tobytes())
        at += n
    return at - offset


def hash_range(fd: int, offset: int, digest: Any) -> int:
    """Hash ``fd`` from ``offset`` to its end into ``digest`` (a reused buffer); how many bytes."""
    buf = _buffer()
    view = memoryview(buf)
    at = offset
    while n := os.preadv(fd, [buf], at):
        digest.update(view[:n])
        at += n
    return at - offset


def read_tail(fd: int, offset: int) -> memoryview | None:
    """``fd`` from ``offset`` to its end, read into this thread's copy buffer (valid until the buffer's
    next use in this thread); None when it does not fit the buffer (nothing read)."""
    size = os.fstat(fd).st_size - offset
    if size < 0 or size > _CHUNK:
        return None
    view = memoryview(_buffer())[:size]
    at = 0
    while at < size:
        n = os.preadv(fd, [view[at:]], offset + at)
        if n == 0:
            raise OSError(errno.EIO, "the file ended while it was read")
        at += n
    return view


def _buffer() -> bytearray:
    """This thread's copy buffer (one per thread, reused: a fresh one costs a page fault a page)."""
    buf: bytearray | None = getattr(_local, "buffer", None)
    if buf is None:
        buf = _local.buffer = bytearray(_CHUNK)
    return buf


_local = threading.local()


def _copy_range(source: int, out: int, at: int, count: int) -> bool:
    """Copy ``count`` bytes of ``source`` at ``at`` to the end of ``out`` in the kernel; False when it
    copied nothing (the caller writes them itself)."""
    done = 0
    while done < count:
        n = os.copy_file_range(source, out, count - done, at + done)
        if n == 0:
            if done:
                raise OSError(errno.EIO, "the source file ended while it was copied")
            return False
        done += n
    return True


#: Tries to name a file whose directory another process removes meanwhile (it emptied out).
_PLACE_ATTEMPTS = 3


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unavailable(what: str, exc: OSError) -> ArchiveUnavailable:
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return ArchiveUnavailable(f"{what}: {name}")


class ArchiveLocation:
    """One directory tree that holds files; ``name`` is how the index refers to it."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.incoming = root / INCOMING

    def prepare(self) -> int:
        """Create the location (0700) and empty ``.incoming``; return how many leftovers were removed."""
        try:
            self._makedirs(self.incoming)
            leftovers = list(self.incoming.iterdir())
            for path in leftovers:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        except OSError as exc:
            raise _unavailable(f"archive location {self.name} cannot be prepared", exc) from exc
        if leftovers:
            log.warning("archive location %s: removed %d temporary file(s) left by an interrupted store",
                        self.name, len(leftovers))
        return len(leftovers)

    def sweep(self, older_than_seconds: float, now: float) -> int:
        """Remove ``.incoming`` files not written to for ``older_than_seconds`` (an association that
        died mid-transfer leaves its spool file there); return how many. Never raises."""
        removed = 0
        try:
            entries = list(os.scandir(self.incoming))
        except OSError:
            return 0
        for entry in entries:
            try:
                if entry.is_file() and now - entry.stat().st_mtime > older_than_seconds:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue  # gone meanwhile, or not ours to remove: the next sweep or start sees it
        if removed:
            log.warning("archive location %s: removed %d abandoned temporary file(s)", self.name, removed)
        return removed

    def path(self, relative: str) -> Path:
        """The absolute path of a file the index names by ``relative``."""
        return self.root / relative

    def open_placed(self, relative: str) -> BinaryIO:
        """A reader of the file :meth:`place` named ``relative`` (raises OSError when it cannot be read)."""
        return open(self.root / relative, "rb")  # the caller closes it

    def stage(self, head: bytes, body: BinaryIO | FileTail) -> StagedFile:
        """Write ``head`` then the rest of ``body`` (streamed) to a new temporary file, fsynced."""
        path = self.incoming / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
            try:
                size, sha256 = (self._write_tail(fd, head, body) if isinstance(body, FileTail)
                                else self._write_stream(fd, head, body))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.discard(path)
            raise _unavailable(f"archive location {self.name} cannot take a file", exc) from exc
        return StagedFile(path, size, sha256)

    @staticmethod
    def _write_stream(fd: int, head: bytes, body: BinaryIO) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        _write_all(fd, head)
        while chunk := body.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            _write_all(fd, chunk)
        return size, digest.hexdigest()

    @staticmethod
    def _write_tail(fd: int, head: bytes, body: FileTail) -> tuple[int, str]:
        digest = hashlib.sha256(body.head)
        _write_all(fd, head + body.head)
        size = len(body.head) + _copy_tail(body.source.fileno(), fd, body.offset, digest)
        return size, digest.hexdigest()

    def adopt(self, path: Path, size: int, sha256: str, ahead: FlushAhead | None = None) -> StagedFile:
        """Stage ``path``, a complete file its writer has closed in ``.incoming``, by fsyncing it.

        ``size`` and ``sha256`` are the writer's, over the same bytes :meth:`stage` would
        hash (the body after the head). ``ahead``: the fsync of ``path`` already started
        (:class:`~engine.archive.flush.FlushAhead`, after its writer closed it); this waits for
        it instead of flushing again. The file is not removed on failure: its writer owns it
        until :meth:`place`.
        """
        if path.parent != self.incoming:
            raise ValueError(f"{path.name} is not in {self.name}'s {INCOMING}")
        try:
            if ahead is not None and ahead.path == path:
                ahead.wait()
            else:
                fsync_file(path)
        except OSError as exc:
            raise _unavailable(f"archive location {self.name} cannot take a file", exc) from exc
        return StagedFile(path, size, sha256)

    def flush_ahead(self, path: Path) -> FlushAhead | None:
        """Start the fsync of ``path`` (a complete spool in ``.incoming`` nobody writes any more) for a
        later :meth:`adopt`; None for a file elsewhere (it is copied, not adopted)."""
        return FlushAhead(path) if path.parent == self.incoming else None

    def place(self, staged: StagedFile, names: Sequence[str]) -> tuple[str, bool]:
        """Give ``staged`` the first of ``names`` (relative paths) not taken; return (name, created).

        When every name is taken, returns (last name, False) and nothing changed: callers
        put the content hash in the last name, so that file holds the same content. The
        temporary name is removed in every case.
        """
        try:
            for name in names:
                final = self.root / name
                if not self._into_place(final, partial(os.link, staged.path, final)):
                    continue
                _fsync_dir(final.parent)
                return name, True
            return names[-1], False
        except OSError as exc:
            raise _unavailable(f"archive location {self.name} cannot name a file", exc) from exc
        finally:
            self.discard(staged.path)

    def _into_place(self, final: Path, name_it: Callable[[], None]) -> bool:
        """Create ``final``'s directories and run ``name_it`` (a link or rename to ``final``); False if
        ``final`` exists (a link). A directory that emptied out and was removed meanwhile (tiering, in
        another process: :meth:`prune`) is made again, a few times, instead of failing the store."""
        for attempt in range(_PLACE_ATTEMPTS):
            try:
                self._makedirs(final.parent)
                name_it()
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:
                if attempt == _PLACE_ATTEMPTS - 1 or final.parent.is_dir():  # not a directory removed meanwhile
                    raise
        raise AssertionError("unreachable")

    def prune(self, directory: Path) -> None:
        """Remove ``directory`` and its parents below the root while they are empty (after a file left
        them: a study tiered off the primary leaves no empty study and series directories behind).
        Never raises: an empty directory left behind costs nothing but a look."""
        while directory != self.root and self.root in directory.parents and directory.name != INCOMING:
            try:
                directory.rmdir()
                _fsync_dir(directory.parent)
            except OSError:  # not empty (a new image arrived), already gone, or not ours to remove
                return
            directory = directory.parent

    def discard(self, path: Path) -> None:
        """Remove ``path`` if it exists (cleanup: never raises)."""
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("archive location %s: cannot remove %s: %s", self.name, path.name, type(exc).__name__)

    def _makedirs(self, path: Path) -> None:
        """Create ``path`` and missing parents 0700, fsyncing each parent that gained an entry."""
        missing: list[Path] = []
        probe = path
        while not probe.is_dir():
            missing.append(probe)
            probe = probe.parent
        for directory in reversed(missing):
            try:
                os.mkdir(directory, _DIR_MODE)
            except FileExistsError:
                continue
            os.chmod(directory, _DIR_MODE)  # exactly 0700 whatever the umask made of it
            _fsync_dir(directory.parent)
