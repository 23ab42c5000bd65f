"""An fsync started ahead of the step that needs it, in a background thread.

A received image's file must be durable before it is given its name
(:meth:`~engine.archive.location.ArchiveLocation.place`), and its name durable before the
index commit: three ordered flushes, on one association the disk's latency three times an
image. The first one need not wait for the checks that decide whether the file is stored at
all (structure walk, header, order lookup: a millisecond or more of CPU): :class:`FlushAhead`
starts the file's ``fsync`` as soon as the receiver has closed it, in a thread of a small
shared pool (``fsync`` releases the GIL), and :meth:`FlushAhead.wait` is where the file's
durability is required, before it is named. Nothing is named earlier than before and no flush
is skipped: a file whose flush failed is never adopted (its error is raised where the
synchronous ``fsync`` raised it).

The same pool overlaps a reheaded file's flush with the hash of its data set
(:func:`~engine.archive.rehead.rehead`): both read what was already written.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

__all__ = ["FlushAhead", "fsync_file", "fsync_in_background"]

#: Flushes running at once in one process (each waits on the disk, not on the CPU).
_THREADS = 4
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="radbridge-fsync")
        return _pool


def fsync_in_background(fd: int) -> Future[None]:
    """``os.fsync(fd)`` in the pool; the caller keeps ``fd`` open until the future is done."""
    return _executor().submit(os.fsync, fd)


def fsync_file(path: Path) -> None:
    """Open ``path`` read-only and fsync it (a read-only descriptor flushes the file as well)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FlushAhead:
    """The ``fsync`` of ``path``, a complete file nobody writes any more, started now.

    The file is opened in the pool's thread: a file renamed or removed meanwhile (a refused
    image moved to quarantine) fails that flush, which only matters to a caller that waits.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._future = _executor().submit(fsync_file, path)

    def wait(self) -> None:
        """Return once the flush has completed; raise its ``OSError`` if it failed."""
        self._future.result()
