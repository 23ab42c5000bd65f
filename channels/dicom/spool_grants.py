"""A receive worker's share of the per-host spool bound, granted by the engine process.

``dicom.max_spool_bytes_per_host`` must hold across the receive worker processes: one host's
associations may run on several of them. The engine process keeps the one ledger
(:class:`~engine.archive.spool_budget.HostBytes`, in :class:`~channels.dicom.receive_pool.ReceivePool`);
a worker takes bytes from it in grants of :data:`GRANT_BYTES` over its link (``grant <id> <host>
<bytes>``, answered ``granted <id> <host> <bytes> 1|0``) and hands bytes back (``return <host> <bytes>``). So the
sum of every worker's grants for a host never passes the bound; a worker keeps at most one unused
grant per host while that host has connections on it, none after. A worker that dies gives
everything back (the engine process forgets its grants).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable

from engine.archive.spool_budget import GRANT_BYTES

__all__ = ["GRANT_BYTES", "GRANT_WAIT_SECONDS", "GrantedBytes", "kept_bytes"]

#: The longest a store waits for the engine's answer; no answer is a refusal (0xA700).
GRANT_WAIT_SECONDS = 5.0


def kept_bytes(max_spool_bytes_per_host: int, max_instance_bytes: int, workers: int) -> int:
    """What one of ``workers`` may hold of a host's share unused: :data:`GRANT_BYTES`, less where the bounds
    leave less room beside an instance of the largest size (0: nothing is kept)."""
    return max(0, min(GRANT_BYTES, (max_spool_bytes_per_host - max_instance_bytes) // max(1, workers)))


class GrantedBytes:
    """A :class:`~engine.archive.spool_budget.SpoolBudget` drawing on grants from the engine process.

    ``send`` sends one message on the link (thread-safe); :meth:`answer` is called by the
    thread that reads the link when a ``granted`` message arrives.
    """

    def __init__(self, send: Callable[[str], None], keep: int = GRANT_BYTES) -> None:
        """``keep``: the most of a host's share this worker holds unused (and asks for at a time); at most
        (``max_spool_bytes_per_host`` - ``max_instance_bytes``) / workers (:func:`kept_bytes`), so that what
        every worker holds unused never stops an instance of the largest size arriving on another."""
        self._send = send
        self._keep = max(0, keep)
        self._granted: Counter[str] = Counter()
        self._used: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[threading.Event, list[bool]]] = {}

    def reserve(self, host: str, count: int) -> bool:
        """Take ``count`` bytes for ``host`` from this worker's grant, asking for more when it is short."""
        with self._lock:
            if self._used[host] + count <= self._granted[host]:
                self._used[host] += count
                return True
        ask = max(count, self._keep)
        if not self._ask(host, ask):
            if ask == count or not self._ask(host, count):  # near the bound: just what is needed
                return False
            ask = count
        with self._lock:
            self._granted[host] += ask
            self._used[host] += count
        return True

    def release(self, host: str, count: int) -> None:
        """Give back ``count`` bytes of ``host``; what this worker holds unused beyond one grant goes back."""
        with self._lock:
            self._used[host] -= count
            spare = self._granted[host] - self._used[host] - self._keep
            if spare > 0:
                self._granted[host] -= spare
        if spare > 0:
            self._send(f"return {host} {spare}")

    def forget(self, host: str) -> None:
        """``host`` has no connection left here: hand back its unused grant."""
        with self._lock:
            spare = self._granted[host] - self._used[host]
            self._granted[host] -= spare
            if not self._granted[host]:
                del self._granted[host]
                self._used.pop(host, None)
        if spare > 0:
            self._send(f"return {host} {spare}")

    def answer(self, text: str) -> None:
        """A ``granted <id> <host> <bytes> 1|0`` message from the engine process."""
        _, ident, host, count, ok = text.split()
        with self._lock:
            waiter = self._waiting.pop(int(ident), None)
            if waiter is not None:
                waiter[1].append(ok == "1")
                waiter[0].set()
        if waiter is None and ok == "1":  # its store stopped waiting: the grant goes back
            self._send(f"return {host} {count}")

    def _ask(self, host: str, count: int) -> bool:
        ident, done, result = next(self._ids), threading.Event(), list[bool]()
        with self._lock:
            self._waiting[ident] = (done, result)
        self._send(f"grant {ident} {host} {count}")
        done.wait(GRANT_WAIT_SECONDS)
        with self._lock:
            self._waiting.pop(ident, None)
            return bool(result and result[0])
