"""What one MLLP listener lets its peers hold: connections and buffered bytes.

The listener's connections register here. :class:`Admission` keeps the counts
that bound them, fairly:

* at most ``max_connections_per_peer`` connections from one IP address and
  ``max_connections`` in all; a new connection over either limit takes the place
  of the longest-idle connection in that group (the peer's own, or anybody's)
  and is refused only when every one of them is working on a frame;
* at most ``max_buffered_bytes`` held by unfinished and unanswered frames of all
  connections: over it, a connection holding a large unfinished frame stops
  being read (``pause_reading``) until the total is back under three quarters of
  the limit. Small frames are never held back, so senders of ordinary messages
  keep working while a large or hostile frame waits.

Only used from the event loop's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["SMALL_FRAME_BYTES", "Admission", "Held", "Throttled"]

#: A connection holding less than this of an unfinished frame is never paused for memory.
SMALL_FRAME_BYTES = 64 * 1024


class Held(Protocol):
    """A connection as the admission sees it."""

    host: str

    def idle_since(self) -> float | None:
        """Loop time of its last byte or answer; None while it is working (not evictable)."""

    def evict(self) -> None:
        """Close it to make room for a new connection."""

    def resume(self) -> None:
        """Start reading again (memory is back under the limit)."""


C = TypeVar("C", bound=Held)


class Throttled:
    """A log line that repeats at most once per ``every`` seconds, saying how many times it happened."""

    def __init__(self, log: logging.Logger, level: int, every: float = 10.0) -> None:
        self.log, self.level, self.every = log, level, every
        self._count = 0
        self._logged_at = -every

    def __call__(self, text: str, *args: object) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._logged_at < self.every:
            return
        self.log.log(self.level, text + " (%d time(s) in the last %.0f s)", *args, self._count, self.every)
        self._count = 0
        self._logged_at = now


class Admission(Generic[C]):
    """Connection and byte counts of one listener (see the module docstring)."""

    def __init__(self, max_connections: int, max_per_peer: int, max_buffered_bytes: int) -> None:
        self.max_connections = max_connections
        self.max_per_peer = min(max_per_peer, max_connections)
        self.max_buffered_bytes = max_buffered_bytes
        self.connections: set[C] = set()
        self.per_peer: dict[str, int] = {}
        self.buffered = 0  # bytes held by all connections' unfinished and unanswered frames
        self.starved: list[C] = []  # paused until the total is back under the low-water mark

    def admit(self, conn: C) -> tuple[bool, C | None]:
        """Count ``conn`` in; return (admitted, the connection evicted for it, if any)."""
        victim = None
        if self.per_peer.get(conn.host, 0) >= self.max_per_peer:
            victim = _idlest(c for c in self.connections if c.host == conn.host)
            if victim is None:
                return False, None
        elif len(self.connections) >= self.max_connections:
            victim = _idlest(self.connections)
            if victim is None:
                return False, None
        if victim is not None:
            self.forget(victim)
            victim.evict()
        self.connections.add(conn)
        self.per_peer[conn.host] = self.per_peer.get(conn.host, 0) + 1
        return True, victim

    def forget(self, conn: C) -> None:
        """Count ``conn`` out (idempotent)."""
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        left = self.per_peer[conn.host] - 1
        if left:
            self.per_peer[conn.host] = left
        else:
            del self.per_peer[conn.host]

    def over(self, frame_bytes: int) -> bool:
        """Should a connection holding ``frame_bytes`` of an unfinished frame stop reading now?"""
        return self.buffered > self.max_buffered_bytes and frame_bytes >= SMALL_FRAME_BYTES

    def change(self, delta: int) -> None:
        """Bytes held went up or down by ``delta``; wake paused connections once under the low-water mark."""
        self.buffered += delta
        if self.starved and self.buffered <= self.max_buffered_bytes * 3 // 4:
            starved, self.starved = self.starved, []
            for conn in starved:
                conn.resume()


def _idlest(candidates: Iterable[C]) -> C | None:
    best: C | None = None
    best_at = 0.0
    for conn in candidates:
        at = conn.idle_since()
        if at is not None and (best is None or at < best_at):
            best, best_at = conn, at
    return best
