"""How much of the spool's disk one calling host may take, and when the spool's disk is too full.

Pure bookkeeping and one ``statvfs``; the C-STORE receiver (:mod:`channels.dicom.store_stream`)
asks before it writes:

* :class:`HostBytes` counts the spool bytes each calling host has in flight (data sets being
  received, not yet stored or refused) against ``dicom.max_spool_bytes_per_host``, so that one
  peer sending many huge instances at once, or a data set that never ends, cannot take the whole
  spool. In the engine process it is the one ledger of every receive worker (each asks it for
  grants, :mod:`channels.dicom.receive_pool`), so the bound holds across processes.
* :func:`below_reserve` tells whether the spool's file system has less than
  ``archive.min_free_bytes`` free: new stores are then refused (0xA700) before they write,
  instead of filling the disk for every modality.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["GRANT_BYTES", "HostBytes", "SpoolBounds", "SpoolBudget", "below_reserve", "free_bytes", "short_of_reserve"]

#: Bytes a receive worker asks of the engine process's ledger at a time (channels.dicom.spool_grants;
#: a 512 KB image asks once every ~128 images). A worker may keep one such grant unused per host while
#: the host is connected to it; less where the per-host bound leaves less room beside an instance of the
#: largest size (channels.dicom.spool_grants.kept_bytes).
GRANT_BYTES = 64 << 20


class SpoolBudget(Protocol):
    """Spool bytes in flight, per calling host (thread-safe)."""

    def reserve(self, host: str, count: int) -> bool:
        """Take ``count`` bytes for ``host``; False (nothing taken) when that would pass its bound."""
        ...

    def release(self, host: str, count: int) -> None:
        """Give back ``count`` bytes of ``host`` (its data set was stored, refused or abandoned)."""
        ...


class HostBytes:
    """At most ``per_host`` bytes in flight for each calling host (a :class:`SpoolBudget`)."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def reserve(self, host: str, count: int) -> bool:
        """Take ``count`` bytes for ``host``; False (nothing taken) when it would hold more than ``per_host``."""
        with self._lock:
            if self._held[host] + count > self.per_host:
                return False
            self._held[host] += count
            return True

    def release(self, host: str, count: int) -> None:
        """Give back ``count`` bytes of ``host``."""
        with self._lock:
            self._held[host] -= count
            if self._held[host] <= 0:
                del self._held[host]

    def held(self, host: str) -> int:
        """Bytes ``host`` holds now."""
        with self._lock:
            return self._held[host]


@dataclass(frozen=True, slots=True)
class SpoolBounds:
    """What one C-STORE receive may take: ``dicom.max_instance_bytes``, ``archive.min_free_bytes`` and the
    per-host ledger (``dicom.max_spool_bytes_per_host``: a :class:`HostBytes`, or a receive worker's grants)."""

    max_instance_bytes: int
    min_free_bytes: int
    budget: SpoolBudget


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on ``directory``'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def below_reserve(directory: Path, reserve: int) -> bool:
    """True when ``directory``'s file system has less than ``reserve`` bytes free (0: never).

    A file system that cannot be asked (the directory is gone) is not judged here: the store
    that follows fails on it and answers for it.
    """
    if reserve <= 0:
        return False
    try:
        return free_bytes(directory) < reserve
    except OSError:
        return False


def short_of_reserve(directory: Path, reserve: int) -> str:
    """Why a store is refused for want of free space, for the log: which file system, what it has and keeps,
    and what to do (no message data)."""
    try:
        free = f"{free_bytes(directory) >> 20} MiB free"
    except OSError as exc:
        free = f"free space unknown ({exc.strerror})"
    return (f"the spool's file system ({directory}) has {free}, less than archive.min_free_bytes"
            f" ({reserve >> 20} MiB): every new image is refused (0xA700) until space is freed there")
