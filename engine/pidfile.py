"""The pid file of ``radbridge run``: one engine per data directory, stale files replaced.

``<data_dir>/radbridge.pid`` holds the decimal pid of the running engine (what
``radbridge reload`` reads). The engine also holds an exclusive ``flock`` on it
for as long as it runs; the kernel drops that lock when the process ends, even
by ``kill -9``. So at start:

* the lock is taken → any pid in the file is stale (that process is gone, or the
  pid now belongs to some other process, which holds no radbridge lock): the
  file is taken over and a log line says which pid it named and why it is stale;
* the lock is held → a live radbridge serves this data directory: refuse to
  start with :class:`~engine.errors.AlreadyRunning` naming its pid.

The pid is written only once the engine is ready for ``SIGHUP``
(:meth:`PidFile.publish`); until then the file is empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from engine.errors import AlreadyRunning

__all__ = ["PidFile", "describe_stale", "running_pid"]

log = logging.getLogger(__name__)


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def describe_stale(pid: int | None) -> str:
    """Why a pid found in an unlocked pid file does not stop a new engine."""
    if pid is None:
        return "holds no pid"
    if pid == os.getpid() or not _running(pid):
        return f"names pid {pid}, which is not running"
    return f"names pid {pid}, which is running but is not a radbridge engine for this data directory"


def running_pid(path: Path) -> int | None:
    """The pid of the engine that holds ``path`` locked now; None when no engine runs.

    Asks the lock, not the file's text: a pid left by an engine that died (kill -9, a
    crash) may by now be some other process's, which must never get a signal meant for
    radbridge. A holder still starting (no pid written yet) is None too.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd)
    else:
        return None  # we got the lock: nobody holds it
    finally:
        os.close(fd)  # also drops a lock taken here


class PidFile:
    """An acquired pid file; :meth:`release` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, path: Path) -> PidFile:
        """Lock ``path`` (created 0600 if missing); raise AlreadyRunning if a live engine holds it."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                holder = f"pid {pid}" if pid is not None else "a process that is still starting"
                raise AlreadyRunning(
                    f"radbridge is already running for data directory {path.parent} ({holder} holds {path});"
                    " stop it first, or give this engine another data_dir") from None
            if _same_file(fd, path):
                break
            os.close(fd)  # the previous holder removed the file meanwhile: lock the new one
        stale = _read_pid(fd)
        if os.fstat(fd).st_size:
            log.warning("stale pid file %s %s; replacing it", path, describe_stale(stale))
        os.ftruncate(fd, 0)
        return cls(path, fd)

    def publish(self, pid: int | None = None) -> None:
        """Write the pid (this process's by default) for ``radbridge reload``."""
        data = f"{os.getpid() if pid is None else pid}\n".encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Remove the file, then drop the lock (in that order: nobody locks a file about to vanish)."""
        with contextlib.suppress(OSError):
            if _same_file(self._fd, self.path):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), path.stat()
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
