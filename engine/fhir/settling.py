"""Studies still receiving images are projected when they settle, not at every projector cycle.

Every stored instance adds pending rows for its study (``instances`` INSERT, and the study's and
series' counts: :mod:`engine.fhir.triggers`). An ImagingStudy lists every series and instance,
so building it costs in proportion to the study's size: a study rebuilt at every cycle while a
modality sends it costs the square of its size (a 1,000-instance study: ~15-50 ms of the engine
process's CPU and a new stored version of ~150 KB each cycle, every half second, taken from the
receive path's cores and holding the engine's single writer).

:class:`StudySettling` decides which pending ``study`` keys a cycle leaves for later:

* a study seen changing for the first time is projected at once (an order's study, a lone image,
  an ADT correction: the FHIR API shows it after one cycle, as before);
* a study projected less than ``max_delay`` ago that is still changing (its newest pending row
  appeared less than ``settle`` ago) is *held*: its pending rows stay where they are;
* it is projected once no change has come for ``settle`` seconds, or ``max_delay`` after its last
  projection while changes keep coming (a long study is shown growing, not only at its end).

Holding is an optimisation only: a held study's pending rows stay in the database until a cycle
that read them commits, exactly as any other's; what is remembered here (when each study was
last projected and its newest pending row) is lost on restart, and then the study is projected
at the next cycle. Other kinds (patients, orders, reports) are never held: an order's change rebuilds
its ServiceRequest and the ImagingStudy at once. A change that reaches the study's own row (an order
linked to it, its patient corrected) is a ``study`` change like an image's: while the study is held it
waits with it (at most ``max_delay``). While the pending rows span more than :data:`MAX_PENDING_SPAN`
ids (a backlog) nothing is held: finding what to hold scans them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from engine.fhir.tables import fhir_pending

__all__ = ["MAX_PENDING_SPAN", "STUDY_KIND", "StudySettling"]

#: The pending kind of study index rows (engine.fhir.triggers: studies, series, instances).
STUDY_KIND = "study"

#: Pending rows (as a span of ids) beyond which nothing is held: the projector works through a backlog
#: as it did before holding existed (three rows an image: ~10 s of four associations storing).
MAX_PENDING_SPAN = 20_000


@dataclass(slots=True)
class _Seen:
    newest: int  # newest pending row id of the study seen so far
    changed: float  # when that row was first seen (clock seconds)
    projected: float | None = None  # when a cycle that built the study last committed


class StudySettling:
    """Which pending studies a cycle holds back (module docstring); one per projector, one thread at a time."""

    def __init__(self, settle: float = 1.0, max_delay: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 keep: int = 4096) -> None:
        """``settle`` 0 holds nothing. ``keep``: studies remembered at most (the oldest projections are forgotten)."""
        self.settle, self.max_delay, self.clock, self.keep = settle, max_delay, clock, keep
        self._seen: dict[str, _Seen] = {}
        self._held: frozenset[str] = frozenset()

    def held(self, conn: Connection) -> frozenset[str]:
        """The pending studies this cycle leaves for later (one grouped query over the pending rows)."""
        if self.settle <= 0:
            return frozenset()
        p = fhir_pending.c
        newest = conn.execute(select(p.key, func.max(p.id)).where(p.kind == STUDY_KIND).group_by(p.key)).all()
        now, held = self.clock(), set()
        for key, top in newest:
            seen = self._seen.get(key)
            if seen is None:  # first seen changing: projected at once
                self._seen[key] = _Seen(int(top), now)
                continue
            if int(top) != seen.newest:
                seen.newest, seen.changed = int(top), now
            recent = seen.projected is not None and now - seen.projected < self.max_delay
            if recent and now - seen.changed < self.settle:
                held.add(str(key))
        self._held = frozenset(held)
        return self._held

    @property
    def holding(self) -> frozenset[str]:
        """The studies the last :meth:`held` left pending (until :meth:`idle`)."""
        return self._held

    def affordable(self, conn: Connection) -> bool:
        """False (and nothing held any more) while the pending rows span more than :data:`MAX_PENDING_SPAN`
        ids: :meth:`held` and a released study's rows are found by scans of the pending table, ~1 us a row,
        which a backlog (the upgrade's backfill, a long outage) would pay at every cycle. Two index lookups."""
        p = fhir_pending.c
        low, high = conn.execute(select(select(func.min(p.id)).scalar_subquery(),
                                        select(func.max(p.id)).scalar_subquery())).one()
        if low is None or int(high) - int(low) < MAX_PENDING_SPAN:
            return True
        self.idle()
        return False

    def projected(self, keys: Iterable[str]) -> None:
        """A cycle that built these studies committed."""
        now = self.clock()
        for key in keys:
            seen = self._seen.get(key)
            if seen is None:
                self._seen[key] = _Seen(-1, now, now)
            else:
                seen.projected = now
        if len(self._seen) > self.keep:  # forget the longest-settled (never a held one)
            done = sorted((s.projected or s.changed, k) for k, s in self._seen.items() if k not in self._held)
            for _, key in done[:len(self._seen) - self.keep]:
                del self._seen[key]

    def idle(self) -> None:
        """Nothing is pending (or another engine process projects): nothing is held any more."""
        self._held = frozenset()

    def next_look(self) -> float | None:
        """Seconds until the earliest held study may be released (None: nothing held)."""
        if not self._held:
            return None
        now = self.clock()
        due = []
        for key in self._held:
            seen = self._seen[key]
            due.append(min(seen.changed + self.settle, (seen.projected or now) + self.max_delay))
        return max(0.0, min(due) - now)
