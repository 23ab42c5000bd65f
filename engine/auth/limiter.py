"""Failed token requests, counted per key in fixed windows, in bounded memory.

The token endpoint counts failures per (client id, IP address) and per IP address.
A key with ``limit`` failures inside the current window is refused until the window
ends, which makes guessing secrets from one address slow, while an attacker who only
knows a client's id cannot lock that client out from another address. At most
``max_keys`` keys are remembered; beyond that the least recently failed are
forgotten first (an attacker spraying addresses can only forget, never block).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FailureLimiter"]


@dataclass(slots=True)
class _Window:
    started: float
    failures: int


class FailureLimiter:
    """At most ``limit`` failures per key per ``window`` seconds."""

    def __init__(self, limit: int, window: float, max_keys: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[str, _Window] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 if it may now."""
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                return 0.0
            left = entry.started + self.window - self._clock()
            if left <= 0:
                del self._keys[key]
                return 0.0
            return left if entry.failures >= self.limit else 0.0

    def fail(self, key: str) -> bool:
        """Count a failure of ``key``; True if this one reached the limit (the key is now blocked)."""
        now = self._clock()
        with self._lock:
            entry = self._keys.pop(key, None)
            if entry is None or entry.started + self.window <= now:
                entry = _Window(now, 0)
            entry.failures += 1
            self._keys[key] = entry
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
            return entry.failures == self.limit

    def __len__(self) -> int:
        return len(self._keys)
