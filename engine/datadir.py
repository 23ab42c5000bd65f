"""Owner-only files: the data directory and everything radbridge writes into it.

The data directory holds PHI (the SQLite database and its ``-wal``/``-shm``
files, later archives) and the pid file. The policy, applied at start:

* ``radbridge run`` sets its umask to 077 (:data:`PROCESS_UMASK`), so every
  file and directory it creates afterwards, whatever creates it (SQLite,
  archives, temporary files), is owner-only.
* The data directory is created 0700; if it exists with group or other
  permission bits, they are removed (never added) and a WARNING names the
  path and both modes. The same holds for the files directly inside it and
  its immediate subdirectories (not deeper: an archive tree of millions of
  files is not walked at each start; its files were created under the umask).
* Where the bits cannot be removed (a file owned by another user, a file
  system without Unix modes), an ERROR says so and the engine still starts.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["PROCESS_UMASK", "prepare_data_dir", "restrict"]

log = logging.getLogger(__name__)

#: The umask of a ``radbridge run`` process: nothing it creates is readable by group or others.
PROCESS_UMASK = 0o077

_OPEN_BITS = stat.S_IRWXG | stat.S_IRWXO


def restrict(path: Path) -> bool:
    """Remove group/other permission bits from ``path``; True if there were any.

    Logs a WARNING when it tightened the mode, an ERROR when it could not.
    """
    try:
        mode = stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return False
    if not mode & _OPEN_BITS or path.is_symlink():
        return False
    wanted = mode & ~_OPEN_BITS
    try:
        os.chmod(path, wanted)
        now = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        log.error("%s is mode %o (readable beyond its owner) and cannot be changed: %s", path, mode,
                  type(exc).__name__)
        return True
    if now & _OPEN_BITS:
        log.error("%s is mode %o (readable beyond its owner); chmod to %o did not hold on this file system",
                  path, now, wanted)
    else:
        log.warning("%s was mode %o (open to group/others); changed to %o", path, mode, wanted)
    return True


def prepare_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` owner-only, or tighten it and its direct entries (see module docstring)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    restrict(data_dir)
    for entry in sorted(data_dir.iterdir()):
        restrict(entry)
