"""Associations to one C-STORE peer, kept open between instances (PS3.7 D.3.3, PS3.8 9.3).

Opening an association costs a TCP connection and an A-ASSOCIATE exchange per
instance; a PACS fed one association per image also logs and indexes one per
image. :class:`AssociationPool` therefore keeps at most ``max_associations``
open to its peer, hands an idle one out again when it has a presentation
context for the next instance, and releases (A-RELEASE) the ones unused for
``idle_seconds``.

Presentation contexts: every (SOP class, transfer syntax) pair sent recently is
proposed again when an association opens, so the instances of a study go on one
association. For a pair, :func:`contexts_for` proposes the stored transfer
syntax on its own context (so that the peer's answer is about it) and, for a
little-endian uncompressed one, a second context offering explicit and implicit
VR little endian as the fallback. A compressed syntax is proposed alone: it is
sent as stored or not at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.presentation import PresentationContext, build_context

__all__ = [
    "CONVERTIBLE_SYNTAXES",
    "FALLBACK_SYNTAXES",
    "MAX_CONTEXTS",
    "AssociationPool",
    "Pair",
    "PooledAssociation",
    "contexts_for",
]

log = logging.getLogger(__name__)

Pair = tuple[str, str]  # (SOP Class UID, transfer syntax UID) of an instance
#: PS3.8 9.3.2.2: presentation context ids are odd numbers 1-255.
MAX_CONTEXTS = 128
#: Stored syntaxes an instance may be re-encoded from without touching its pixel values.
CONVERTIBLE_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})
FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def contexts_for(pair: Pair, convert: bool) -> list[PresentationContext]:
    """The presentation contexts proposed for ``pair`` (see the module docstring)."""
    sop_class, syntax = pair
    contexts = [build_context(sop_class, [syntax])]
    fallback: list[str | UID] = [ts for ts in FALLBACK_SYNTAXES if ts != syntax]
    if convert and syntax in CONVERTIBLE_SYNTAXES and fallback:
        contexts.append(build_context(sop_class, fallback))
    return contexts


@dataclass(eq=False)
class PooledAssociation:
    """An established association and the pairs it proposed contexts for."""

    assoc: Any
    proposed: frozenset[Pair]
    last_used: float = field(default_factory=time.monotonic)
    _message_id: int = 0

    def next_message_id(self) -> int:
        """A Message ID not used before on this association (PS3.7 9.1.1.1: 1-65535)."""
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    @property
    def alive(self) -> bool:
        return bool(self.assoc.is_established)

    def release(self) -> None:
        """A-RELEASE if still established (a peer that does not answer gets an abort)."""
        if self.assoc.is_established:
            self.assoc.release()


Opener = Callable[[list[PresentationContext]], Any]


class AssociationPool:
    """At most ``max_associations`` associations to one peer; thread-safe.

    ``open_association(contexts)`` returns a pynetdicom association (established,
    rejected or aborted: the caller of :meth:`acquire` looks).
    """

    def __init__(self, open_association: Opener, max_associations: int, idle_seconds: float, convert: bool) -> None:
        self._open = open_association
        self._max = max_associations
        self._idle_seconds = idle_seconds
        self._convert = convert
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_associations)
        self._idle: list[PooledAssociation] = []
        self._in_use = 0
        self._recent: dict[Pair, None] = {}  # insertion order: least recently sent first
        self._closing = threading.Event()
        self._reaper: threading.Thread | None = None
        self.opened = 0  # associations opened so far (status, tests)

    def acquire(self, pair: Pair, timeout: float) -> tuple[PooledAssociation | None, Any]:
        """An association that proposed ``pair``: (pooled, None), or (None, the failed association).

        Waits up to ``timeout`` for a free slot (TimeoutError). A pooled association must be
        given back with :meth:`give_back`, whatever happened on it.
        """
        if not self._slots.acquire(timeout=timeout):
            raise TimeoutError(f"all {self._max} associations busy")
        try:
            reused = self._take_idle(pair)
            if reused is not None:
                with self._lock:
                    self._in_use += 1
                return reused, None
            pairs = self._proposed_pairs(pair)
            assoc = self._open([cx for p in pairs for cx in contexts_for(p, self._convert)])
        except BaseException:
            self._slots.release()
            raise
        if not assoc.is_established:
            self._slots.release()
            return None, assoc
        with self._lock:
            self._in_use += 1
            self.opened += 1
        return PooledAssociation(assoc, frozenset(pairs)), None

    def give_back(self, pooled: PooledAssociation, keep: bool) -> None:
        """Return ``pooled`` for reuse (``keep`` and still established) or close it."""
        with self._lock:
            self._in_use -= 1
        try:
            if keep and pooled.alive and self._idle_seconds > 0 and not self._closing.is_set():
                pooled.last_used = time.monotonic()
                with self._lock:
                    self._idle.append(pooled)
                self._start_reaper()
            else:
                pooled.release()
        finally:
            self._slots.release()

    def close(self) -> None:
        """Release every idle association and stop the reaper (in-use ones close on give_back)."""
        self._closing.set()
        with self._lock:
            idle, self._idle = self._idle, []
        for pooled in idle:
            _quietly(pooled.release)

    def reap(self, now: float) -> int:
        """Release the associations idle for ``idle_seconds`` or more; return how many."""
        with self._lock:
            expired = [p for p in self._idle if now - p.last_used >= self._idle_seconds]
            self._idle = [p for p in self._idle if p not in expired]
        for pooled in expired:
            _quietly(pooled.release)
        return len(expired)

    def _take_idle(self, pair: Pair) -> PooledAssociation | None:
        """The most recently used live idle association that proposed ``pair``; others over the limit close."""
        self._remember(pair)
        with self._lock:
            self._idle = [p for p in self._idle if p.alive]
            match = next((p for p in reversed(self._idle) if pair in p.proposed), None)
            if match is not None:
                self._idle.remove(match)
                return match
            # A new association is about to open: the idle ones that cannot carry this pair
            # give way when they would take the open count over the limit.
            surplus = max(0, self._in_use + len(self._idle) + 1 - self._max)
            closing, self._idle = self._idle[:surplus], self._idle[surplus:]
        for pooled in closing:
            _quietly(pooled.release)
        return None

    def _remember(self, pair: Pair) -> None:
        with self._lock:
            self._recent.pop(pair, None)
            self._recent[pair] = None

    def _proposed_pairs(self, pair: Pair) -> list[Pair]:
        """``pair`` first, then the most recently sent others, as many as the context ids allow."""
        chosen: list[Pair] = []
        count = 0
        with self._lock:
            candidates = [pair, *reversed([p for p in self._recent if p != pair])]
        for candidate in candidates:
            size = len(contexts_for(candidate, self._convert))
            if count + size > MAX_CONTEXTS:
                break
            chosen.append(candidate)
            count += size
        return chosen

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None and self._reaper.is_alive():
                return
            self._reaper = threading.Thread(target=self._reap_loop, name="dicom-destination-reaper", daemon=True)
            self._reaper.start()

    def _reap_loop(self) -> None:
        interval = min(max(self._idle_seconds / 4, 0.05), 1.0)
        while not self._closing.wait(interval):
            self.reap(time.monotonic())
            with self._lock:
                if not self._idle:
                    self._reaper = None
                    return


def _quietly(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception:  # a peer that vanished while idle: nothing left to release
        log.debug("closing an idle association failed", exc_info=True)
