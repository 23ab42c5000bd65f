"""Which TCP connections the DICOM listener holds, and for how long (PS3.8 9.1.5, 9.2).

Pure bookkeeping, no sockets: :class:`HostSlots` counts the open connections of each
calling host against ``dicom.max_associations_per_host``; :class:`ArtimClock` tells,
from the upper-layer state seen at each look, which connection has sat longer than
the ARTIM timeout in a state only ARTIM bounds: Sta2 (transport open, waiting for
the A-ASSOCIATE-RQ), Sta13 (waiting for the peer to close after a release,
rejection or abort) and Sta1 as seen from outside (pynetdicom's reactor reads the
socket before it takes the transport indication, so a peer that sends part of its
first PDU keeps the state machine in Sta1; after a close, cutting is harmless).
:mod:`channels.dicom.listener` drives both.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["ARTIM_STATES", "ArtimClock", "HostSlots", "RefusalReport"]

#: Upper-layer states (PS3.8 table 9-10) whose only way out, if the peer does nothing, is ARTIM.
ARTIM_STATES = frozenset({"Sta1", "Sta2", "Sta13"})


class HostSlots:
    """At most ``per_host`` open connections for each calling host (thread-safe)."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, host: str) -> bool:
        """Take a slot for ``host``; False (nothing taken) if it already holds ``per_host``."""
        with self._lock:
            if self._held[host] >= self.per_host:
                return False
            self._held[host] += 1
            return True

    def give_back(self, host: str) -> None:
        """Return one slot of ``host`` (its connection is gone)."""
        with self._lock:
            self._held[host] -= 1
            if self._held[host] <= 0:
                del self._held[host]

    def held(self, host: str) -> int:
        """Slots ``host`` holds now."""
        with self._lock:
            return self._held[host]

    def total(self) -> int:
        """Slots all hosts hold now."""
        with self._lock:
            return sum(self._held.values())


@dataclass(slots=True)
class ArtimClock:
    """ARTIM for one connection, read from its upper-layer state at each look.

    pynetdicom runs its own ARTIM timer only while its reactor thread is free to check
    it; a peer that sends part of a PDU and then nothing keeps that thread blocked in
    ``recv``, so the listener looks from outside as well.
    """

    timeout: float
    state: str = ""
    since: float = 0.0
    _seen: bool = field(default=False, repr=False)

    def expired(self, state: str, now: float) -> bool:
        """True once ``state`` is an :data:`ARTIM_STATES` state held for longer than ``timeout``."""
        if not self._seen or state != self.state:
            self.state, self.since, self._seen = state, now, True
        return state in ARTIM_STATES and now - self.since > self.timeout


class RefusalReport:
    """When to log refused connections: the first from a host, then one line per ``interval`` with a count.

    A host hammering the listener would otherwise write one WARNING per connection. Past
    ``hosts_kept`` hosts, those last reported more than ``interval`` ago are forgotten (their next
    refusal is reported at once, as it would be; a count of theirs not yet reported is lost), so
    refusals from ever new addresses do not grow the process.
    """

    def __init__(self, interval: float = 60.0, hosts_kept: int = 1024) -> None:
        self.interval = interval
        self.hosts_kept = hosts_kept
        self._last: dict[str, float] = {}
        self._since: Counter[str] = Counter()
        self._lock = threading.Lock()

    def note(self, host: str, now: float) -> int | None:
        """Count one refusal of ``host``; the refusals to report now (this one included), or None."""
        with self._lock:
            self._since[host] += 1
            last = self._last.get(host)
            if last is not None and now - last < self.interval:
                return None
            if last is None and len(self._last) >= self.hosts_kept:
                self._forget_before(now - self.interval)
            self._last[host] = now
            return self._since.pop(host)

    def _forget_before(self, cutoff: float) -> None:
        for host in [h for h, at in self._last.items() if at < cutoff]:
            del self._last[host]
            self._since.pop(host, None)

    def __len__(self) -> int:
        """Hosts remembered now."""
        return len(self._last)
