"""Giving a received file a new head in place: its pixel data is neither copied nor written again.

A coerced image differs from the file the receiver spooled only in its head (File Meta
Information and the header elements before the pixel data). Copying the rest into a new
file costs a copy of every byte and a second flush of data the receiver's writeback has
already sent to the disk. Instead, :func:`rehead` shifts the spool's tail by whole
file-system blocks (``fallocate(FALLOC_FL_INSERT_RANGE)``: the file's extents move, no data
does), writes the new head over the front, pads the File Meta Information to make the
lengths meet (a Private Information element, :func:`~engine.archive.part10.pad_file_meta`;
the dataset is exactly the coerced one), hashes the dataset while it fsyncs: only the new
head's blocks are written.

The tail is read *before* the range is inserted: inserting a range drops the file's page
cache from the insertion point on (ext4 writes the file back and truncates its cached pages),
so a hash that read the tail afterwards read it from the disk again (~0.8 ms of a 512 KB CT on
this project's VM, on the image's critical path). A tail that fits this thread's copy buffer
(:func:`~engine.archive.location.read_tail`, 1 MB) is held there and hashed while the file is
fsynced; a larger one is hashed before the insertion, from the cache, in the same streamed
pass as before (memory stays flat whatever the size).

Where the file system cannot insert a range (not ext4 or XFS, not Linux) nothing has been
changed and the caller stages a copy (:meth:`~engine.archive.location.ArchiveLocation.stage`).
A failure after the insertion leaves the spool unusable: the caller answers 0xA700 and the
receiver drops the spool, as for any staging failure.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.archive.flush import fsync_in_background
from engine.archive.location import ArchiveLocation, FileTail, StagedFile, hash_range, read_tail
from engine.archive.part10 import min_padding, pad_file_meta
from engine.errors import ArchiveUnavailable
from engine.libc import libc_function

__all__ = ["Reheaded", "rehead", "rewrite_front"]

_FALLOC_FL_INSERT_RANGE = 0x20  # linux/falloc.h
_PAGE = mmap.PAGESIZE
#: Errors that mean "this file system (or kernel) cannot insert a range": nothing was changed.
_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENODEV, errno.EPERM})


_fallocate = libc_function("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


@dataclass(frozen=True, slots=True)
class Reheaded:
    """A staged file and the File Meta Information it starts with (padded)."""

    staged: StagedFile
    meta: bytes


def _shift(old_head: int, new_head: int, block: int) -> tuple[int, int]:
    """(bytes to insert at the front, padding for the meta) so that ``new_head`` + padding ends where
    ``old_head`` + the inserted bytes does; the padding is 0 or at least :func:`min_padding`."""
    shift = max(0, -(-(new_head - old_head) // block) * block)
    pad = old_head + shift - new_head
    if pad and pad < min_padding():
        shift += block
        pad += block
    return shift, pad


def rehead(location: ArchiveLocation, path: Path, meta: bytes, tail: FileTail) -> Reheaded | None:
    """Stage ``path`` (a complete spool in ``location``'s ``.incoming``, the file ``tail.source`` is open on)
    as ``meta`` (padded: :func:`~engine.archive.part10.pad_file_meta`) + ``tail.head`` + its bytes from
    ``tail.offset`` on.

    Returns None, with nothing changed, when the file system cannot insert a range; raises
    :class:`~engine.errors.ArchiveUnavailable` on any other failure (the spool is then unusable).
    """
    if _fallocate is None or path.parent != location.incoming:
        return None
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            shift, pad = _shift(tail.offset, len(meta) + len(tail.head), os.fstat(fd).st_blksize or 4096)
            # Read (or hash) the tail while it is cached: the insertion below drops the cached pages.
            held = read_tail(fd, tail.offset)
            digest = hashlib.sha256(tail.head)
            size = len(tail.head) + (len(held) if held is not None else hash_range(fd, tail.offset, digest))
            # The front is written in whole pages: the last page of a shorter front, no longer cached, would
            # be read back from the disk before being written. It ends with the tail's first bytes, as they are.
            end = len(meta) + pad + len(tail.head)
            fill = min(-end % _PAGE, size - len(tail.head))
            follow = bytes(held[:fill]) if held is not None else os.pread(fd, fill, tail.offset)
            if shift and _fallocate(fd, _FALLOC_FL_INSERT_RANGE, 0, shift) != 0:
                err = ctypes.get_errno()
                if err in _UNSUPPORTED:
                    return None
                raise OSError(err, os.strerror(err))
            padded = pad_file_meta(meta, len(meta) + pad)
            _finish(fd, padded + tail.head + follow, held, digest)
            return Reheaded(StagedFile(path, size, digest.hexdigest()), padded)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _unavailable(location, exc) from exc


def _unavailable(location: ArchiveLocation, exc: OSError) -> ArchiveUnavailable:
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return ArchiveUnavailable(f"archive location {location.name} cannot take a file: {name}")


def rewrite_front(location: ArchiveLocation, path: Path, meta: bytes, tail: FileTail) -> Reheaded | None:
    """Stage ``path`` as :func:`rehead` does, by writing the new front over the old one in place: when
    ``meta`` padded (:func:`~engine.archive.part10.pad_file_meta`) + ``tail.head`` is exactly ``tail.offset``
    bytes, which the room a receiver leaves in its spool's File Meta Information
    (:func:`~engine.archive.part10.with_room`) makes it for a header that grew by less than that room.

    No range is inserted: the tail keeps its blocks and its cached pages (already written back, or being
    written, by the spool's flush), the front's pages are written, and the file is fsynced while its data
    set is hashed from the cache. Returns None, with nothing changed, when the new front does not fit
    exactly; raises :class:`~engine.errors.ArchiveUnavailable` on a failure (the spool is then unusable).
    """
    pad = tail.offset - len(meta) - len(tail.head)
    if path.parent != location.incoming or pad < 0 or pad % 2 or 0 < pad < min_padding():
        return None
    padded = pad_file_meta(meta, len(meta) + pad)
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            # Nothing drops the tail's cached pages here: read (or hashed) from the cache, as rehead does.
            held = read_tail(fd, tail.offset)
            digest = hashlib.sha256(tail.head)
            size = len(tail.head) + (len(held) if held is not None else hash_range(fd, tail.offset, digest))
            _finish(fd, padded + tail.head, held, digest)
            return Reheaded(StagedFile(path, size, digest.hexdigest()), padded)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _unavailable(location, exc) from exc


def _finish(fd: int, front_bytes: bytes, held: memoryview | None, digest: Any) -> None:
    """Write ``front_bytes`` over the front and fsync; ``held`` (the tail, read before the insertion) is
    hashed into ``digest`` while the flush runs. ``digest`` already covers the tail when ``held`` is None."""
    front = memoryview(front_bytes)
    at = 0
    while at < len(front):
        at += os.pwrite(fd, front[at:], at)
    if held is None:
        os.fsync(fd)
        return
    # Everything is written: the flush runs while the held tail is hashed (the GIL is released by both).
    flushed = fsync_in_background(fd)
    try:
        digest.update(held)
    finally:
        flushed.wait()  # the caller closes fd: never before the flush has ended (its error raised here)
