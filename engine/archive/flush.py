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
(:func:`~engine.archive.rehead.rehead`): both read what was already written. A pool of its
own hashes a received data set (:class:`HashAhead`, SHA-256 of the spool's bytes after its File Meta
Information) while the image is checked and matched, instead of on the thread that receives
it, between the reads of its PDUs: the hash is recorded in the index, so it is waited for
before the file is staged (and before a coerced spool is changed in place), never skipped.

Handing work to another thread costs a wake-up (on this VM ~50 us of CPU and ~100 us before
the other thread runs), which only pays while a core would otherwise wait. With two images or
more in flight in one process (:data:`IN_FLIGHT`: several associations storing at once), the
cores are already busy and the hand-overs are the cost: each flush and hash is then *deferred*,
run by the thread that waits for it, when it waits (bench_store: the engine's CPU an image on
four associations 6.1 -> 5.3 ms). A deferred flush that nobody waits for never runs: the
received spool of an image that is given a new head (:func:`~engine.archive.rehead.rehead`,
which flushes the whole file itself) or refused. Which way a flush runs changes when, never
whether, a file is durable before it is named.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

__all__ = ["IN_FLIGHT", "Flush", "FlushAhead", "HashAhead", "ImagesInFlight", "fsync_file", "fsync_in_background"]

#: Flushes running at once in one process (each waits on the disk, not on the CPU).
_THREADS = 4


class Flush:
    """One flush: run by the pool (:meth:`execute`) or, ``deferred``, by the first :meth:`wait`.

    A lock held until the flush has run, rather than a ``concurrent.futures`` Future: handing a
    flush over costs one queue put and no Condition (this runs for every received image). A
    deferred flush belongs to the thread that made it: only that thread may wait for it.
    """

    def __init__(self, run: Callable[[], None], deferred: bool = False) -> None:
        self._run = run
        self._error: Exception | None = None
        self._deferred = deferred
        self._done = threading.Lock()
        if not deferred:
            self._done.acquire()

    def execute(self) -> None:
        """Run the flush (in a pool thread) and release the waiters."""
        try:
            self._run()
        except Exception as exc:  # raised to the waiter; the pool's thread lives on
            self._error = exc
        finally:
            self._done.release()

    def wait(self) -> None:
        """Return once the flush has run (a deferred one runs now); raise its error (an ``OSError``) if it failed."""
        if self._deferred:
            self._deferred = False
            try:
                self._run()
            except Exception as exc:  # kept for a second wait, as the pool's are
                self._error = exc
        else:
            with self._done:
                pass
        if self._error is not None:
            raise self._error


class ImagesInFlight:
    """The images this process is receiving or storing now, each one a token held weakly (a token
    its receiver dropped without :meth:`ended`, after an unexpected error, stops counting with it)."""

    def __init__(self) -> None:
        self._tokens: weakref.WeakSet[object] = weakref.WeakSet()

    def started(self, token: object) -> None:
        self._tokens.add(token)

    def ended(self, token: object) -> None:
        self._tokens.discard(token)

    def count(self) -> int:
        return len(self._tokens)

    def overlap(self) -> bool:
        """True when a flush or hash should go to a pool thread: this process has at most one image in flight."""
        return len(self._tokens) <= 1


#: This process's images in flight (the DICOM receivers report theirs: channels.dicom.store_stream).
IN_FLIGHT = ImagesInFlight()


class _Pool:
    """A few daemon threads running flushes in the order they were handed over (started on first use)."""

    def __init__(self, name: str = "radbridge-fsync", threads: int = _THREADS) -> None:
        self._name = name
        self._threads = threads
        self._jobs: queue.SimpleQueue[Flush] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = False

    def submit(self, run: Callable[[], None], deferred: bool = False) -> Flush:
        """``run`` handed to a pool thread now, or, ``deferred``, left to the :meth:`Flush.wait` of the caller."""
        if deferred:
            return Flush(run, deferred=True)
        if not self._started:
            self._start()
        flush = Flush(run)
        self._jobs.put(flush)
        return flush

    def _start(self) -> None:
        with self._lock:
            if not self._started:
                for n in range(self._threads):
                    threading.Thread(target=self._loop, name=f"{self._name}_{n}", daemon=True).start()
                self._started = True

    def _loop(self) -> None:
        while True:
            self._jobs.get().execute()


_POOL = _Pool()
#: Hashes run in their own threads: CPU work (the GIL released) must not queue behind flushes
#: blocked on the disk (with several associations, every flush thread may be waiting).
_HASH_POOL = _Pool("radbridge-hash")


def fsync_in_background(fd: int) -> Flush:
    """``os.fsync(fd)`` in the pool (deferred to :meth:`Flush.wait` while other images are in flight,
    :data:`IN_FLIGHT`); the caller keeps ``fd`` open until :meth:`Flush.wait` returned."""
    return _POOL.submit(lambda: os.fsync(fd), deferred=not IN_FLIGHT.overlap())


def fsync_file(path: Path) -> None:
    """Open ``path`` read-only and fsync it (a read-only descriptor flushes the file as well)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FlushAhead:
    """The ``fsync`` of ``path``, a complete file nobody writes any more, started now (or, while
    other images are in flight, :data:`IN_FLIGHT`, run by :meth:`wait`, and not at all without one).

    The file is opened in the pool's thread: a file renamed or removed meanwhile (a refused
    image moved to quarantine) fails that flush, which only matters to a caller that waits.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._flush = _POOL.submit(lambda: fsync_file(path), deferred=not IN_FLIGHT.overlap())

    def wait(self) -> None:
        """Return once the flush has completed; raise its ``OSError`` if it failed."""
        self._flush.wait()


#: The pool threads' read buffer for :class:`HashAhead` (one per thread, reused).
_HASH_CHUNK = 1 << 20
_local = threading.local()


class HashAhead:
    """SHA-256 of the last ``size`` bytes of ``path`` (a complete file nobody writes any more: a received
    data set after the File Meta Information its receiver wrote first), computed now in a thread of
    the hash pool (not the flush pool: a hash must not wait behind flushes blocked on the disk), or,
    while other images are in flight (:data:`IN_FLIGHT`), by :meth:`wait`.

    :meth:`wait` returns the hex digest, or raises the ``OSError`` that reading it met. The caller
    must not change the file before :meth:`wait` returned.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._sha256 = ""
        self._job = _HASH_POOL.submit(self._run, deferred=not IN_FLIGHT.overlap())

    def _run(self) -> None:
        buf: bytearray | None = getattr(_local, "buffer", None)
        if buf is None:
            buf = _local.buffer = bytearray(_HASH_CHUNK)
        view = memoryview(buf)
        digest = hashlib.sha256()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            end = os.fstat(fd).st_size
            at = end - self.size
            if at < 0:
                raise OSError(errno.EIO, "the received file is shorter than its data set")
            while at < end:
                n = os.preadv(fd, [view[: min(len(view), end - at)]], at)
                if n == 0:
                    raise OSError(errno.EIO, "the received file ended while it was hashed")
                digest.update(view[:n])
                at += n
        finally:
            os.close(fd)
        self._sha256 = digest.hexdigest()

    def wait(self) -> str:
        """The data set's SHA-256 (hex) once computed; raise its ``OSError`` if it could not be read."""
        self._job.wait()
        return self._sha256
