"""The projector: turns pending changes (``fhir_pending``) into stored resources, durably.

One cycle reads up to ``batch`` pending rows, works out which resources they touch
(each module's ``kinds()``), builds those resources in bulk from the domain tables,
writes the changed ones (:mod:`engine.fhir.store`) and deletes exactly the pending
rows it read, in one write transaction. A change committed while a cycle builds
leaves a newer pending row, so the next cycle builds it again: the stored
resources always converge on the domain tables, and a crash between the two
phases only repeats work.

On SQLite the build runs on a read connection and only the write holds the single
writer; on PostgreSQL a cycle runs in one transaction under an advisory lock, so
several engine processes never project the same rows at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, and_, delete, func, insert, select

from engine.fhir import store, triggers
from engine.fhir.instant import instant
from engine.fhir.model import Built, FhirSettings
from engine.fhir.push import PushSubscription, enqueue_removed, enqueue_stored
from engine.fhir.registry import MODULES
from engine.fhir.resources.imaging_study import ENDPOINT_ID
from engine.fhir.settling import STUDY_KIND, StudySettling
from engine.fhir.tables import fhir_pending
from engine.store.database import Database, unavailable

__all__ = ["Projection", "Projector", "apply", "collect", "project_all"]

log = logging.getLogger(__name__)

#: Pending row ids deleted by one statement (bound parameters: SQLite allows 32,766 a statement).
_DELETE_CHUNK = 1000

#: PostgreSQL advisory lock key of the projector ("rbfhirpj" in ASCII).
PROJECTOR_LOCK = 0x7262666869727069


@dataclass(frozen=True, slots=True)
class Projection:
    """One cycle's work: the pending rows consumed and the resources (None: to remove) they produce."""

    pending_ids: list[int]
    resources: list[tuple[str, str, Built | None]]
    push: tuple[PushSubscription, ...] = ()  # destinations to queue the new versions for
    studies: frozenset[str] = frozenset()  # the pending study keys it consumes (engine.fhir.settling)


def collect(conn: Connection, settings: FhirSettings, batch: int = 500,
            settling: StudySettling | None = None) -> Projection:
    """Read up to ``batch`` pending rows and build every resource they touch (reads only).

    With ``settling``, the studies it holds are left pending (:mod:`engine.fhir.settling`), and a study
    that is built consumes every pending row of it read here, however many (a settled study's rows
    are consumed by one cycle, not by one per ``batch``)."""
    p = fhir_pending.c
    if settling is not None and not settling.affordable(conn):  # a backlog: holding would scan it every cycle
        settling = None
    held = settling.held(conn) if settling is not None else frozenset()
    query = select(p.id, p.kind, p.key).order_by(p.id).limit(batch)
    if held:
        query = query.where(~and_(p.kind == STUDY_KIND, p.key.in_(sorted(held))))
    rows = list(conn.execute(query).all())
    keys: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        keys[row.kind].add(row.key)
    if settling is not None and keys.get(STUDY_KIND):
        read = {int(row.id) for row in rows}
        rows += [row for row in conn.execute(select(p.id, p.kind, p.key).where(
            p.kind == STUDY_KIND, p.key.in_(sorted(keys[STUDY_KIND])))) if int(row.id) not in read]
    resources: list[tuple[str, str, Built | None]] = []
    for module in MODULES:
        wanted: set[str] = set()
        for kind, resolve in module.kinds().items():
            if keys.get(kind):
                wanted |= resolve(conn, keys[kind])
        if wanted:
            built = module.build(conn, wanted, settings)
            resources += [(module.TYPE, res_id, built[res_id]) for res_id in sorted(built)]
    return Projection([int(r.id) for r in rows], resources, settings.push, frozenset(keys.get(STUDY_KIND, ())))


def apply(conn: Connection, projection: Projection, now: datetime | None = None) -> tuple[int, int]:
    """Write the projection and delete its pending rows; return (resources changed, push rows queued)."""
    stamp = instant(now or datetime.now(UTC))
    built = [b for _, _, b in projection.resources if b is not None]
    changed = store.write_all(conn, built, stamp)
    queued = enqueue_stored(conn, built, stamp, projection.push) if changed and projection.push else 0
    for res_type, res_id, found in projection.resources:
        if found is None:
            queued += enqueue_removed(conn, res_type, res_id, projection.push)
            changed += store.remove(conn, res_type, res_id)
    for at in range(0, len(projection.pending_ids), _DELETE_CHUNK):
        conn.execute(delete(fhir_pending).where(fhir_pending.c.id.in_(projection.pending_ids[at:at + _DELETE_CHUNK])))
    return changed, queued


def _locked_cycle(conn: Connection, settings: FhirSettings, batch: int,
                  settling: StudySettling | None) -> tuple[int, int, int, frozenset[str]]:
    if not conn.execute(select(func.pg_try_advisory_xact_lock(PROJECTOR_LOCK))).scalar():
        if settling is not None:
            settling.idle()
        return 0, 0, 0, frozenset()  # another engine process is projecting
    projection = collect(conn, settings, batch, settling)
    return len(projection.pending_ids), *apply(conn, projection), projection.studies


def project_all(db: Database, settings: FhirSettings, batch: int = 500) -> int:
    """Run cycles until nothing is pending (blocking; tests, backfill); return resources changed."""
    changed = 0
    while True:
        consumed, written, _ = _cycle(db, settings, batch)
        changed += written
        if consumed == 0:
            return changed


def _cycle(db: Database, settings: FhirSettings, batch: int,
           settling: StudySettling | None = None) -> tuple[int, int, int]:
    """One committed cycle: (pending rows consumed, resources changed, push rows queued)."""
    if not db.is_sqlite:
        consumed, changed, queued, studies = db.writer.call(lambda c: _locked_cycle(c, settings, batch, settling))
    else:
        projection = db.read(lambda c: collect(c, settings, batch, settling))
        if not projection.pending_ids:
            return 0, 0, 0
        consumed, (changed, queued), studies = (len(projection.pending_ids),
                                                db.writer.call(lambda c: apply(c, projection)), projection.studies)
    if settling is not None:
        settling.projected(studies)
    return consumed, changed, queued


def _any_pending(conn: Connection) -> bool:
    return conn.execute(select(fhir_pending.c.id).limit(1)).first() is not None


class Projector:
    """The engine's projector task: projects pending rows, woken by the engine's commits, until stopped.

    Idle, it issues no query until the writer commits (any commit may have added pending
    rows through the triggers) or ``idle_interval`` passes (the fallback for changes other
    processes commit: the CLI, another engine on PostgreSQL). Woken, it waits ``debounce``
    so a burst's changes are projected together, and under steady load it starts a cycle
    at most every ``interval``: each resource is built once per cycle however many of its
    changes are pending, so fewer, larger cycles cost less per message. Pending rows stay
    in the database until the cycle that read them commits, so waiting loses nothing.
    """

    def __init__(self, db: Database, settings: FhirSettings, interval: float = 0.5, batch: int = 1000,
                 yield_ratio: float = 3.0, debounce: float = 0.2, idle_interval: float = 5.0,
                 wake_outbox: Callable[[], None] = lambda: None, settling: StudySettling | None = None) -> None:
        """``yield_ratio``: after a cycle that leaves more work, pause that many times its duration, so that
        the projector takes at most 1/(1+ratio) of the process while messages arrive (they come first).

        ``wake_outbox``: called after a cycle that queued push rows has committed, as the channels do
        after enqueueing, so a push leaves at once instead of at the outbox's next poll.

        ``settling``: which studies still receiving images wait (:mod:`engine.fhir.settling`; default: its
        defaults)."""
        self.db, self.settings, self.interval, self.batch = db, settings, interval, batch
        self.settling = settling if settling is not None else StudySettling()
        self.wake_outbox = wake_outbox
        self.yield_ratio, self.debounce, self.idle_interval = yield_ratio, debounce, idle_interval
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._signalled = False  # a wake-up is on its way (one per cycle, not one per commit)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.checks = 0  # queries for pending rows so far (tests, diagnostics)
        self._store_down = False  # the last round found the database unavailable (said once per outage)

    async def start(self) -> None:
        """Restore the change-feed triggers (a table rebuild drops them), sync the Endpoint, start projecting."""
        def prepare(conn: Connection) -> None:
            triggers.install(conn)
            conn.execute(insert(fhir_pending).values(kind="Endpoint", key=ENDPOINT_ID))

        await self.db.writer.run(prepare)
        self._loop = asyncio.get_running_loop()
        self.db.writer.add_commit_listener(self._notify)
        self._task = asyncio.create_task(self._run(), name="fhir-projector")

    def _notify(self) -> None:
        """Commit listener (writer thread or event loop): wake the projector, once until it looks."""
        if self._signalled or self._loop is None:
            return
        self._signalled = True
        with contextlib.suppress(RuntimeError):  # the loop is closing: the projector is stopping too
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)

    async def _until_woken(self, last_end: float) -> None:
        """Wait for a commit's signal, the fallback poll or stop; then let the changes gather.

        After a signal: ``debounce``, and at least ``interval`` since the previous cycle ended
        (under steady load cycles are as far apart as when the projector polled every ``interval``).
        """
        wake, stop = asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stop.wait())
        held = self.settling.next_look()  # a study left pending: looked at again when it may have settled
        timeout = self.idle_interval if held is None else min(self.idle_interval, held + self.debounce)
        try:
            await asyncio.wait((wake, stop), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            stop.cancel()
        if self._wake.is_set():
            await self._sleep(max(self.debounce, last_end + self.interval - time.monotonic()))

    async def _run(self) -> None:
        batch, narrow, last_end, more = self.batch, 0, 0.0, True  # at start: whatever is pending already
        while not self._stop.is_set():
            if not more:
                await self._until_woken(last_end)
                if self._stop.is_set():
                    return
            # Cleared before looking, so a commit from now on wakes the next round.
            self._wake.clear()
            self._signalled, more, pause = False, False, 0.0
            try:
                self.checks += 1
                pending = await self.db.read_async(_any_pending)
                if self._store_down:
                    log.info("FHIR projector: store available again")
                    self._store_down = False
                if not pending:
                    self.settling.idle()
                else:
                    started = time.monotonic()
                    consumed, _, queued = await asyncio.to_thread(_cycle, self.db, self.settings, batch,
                                                                   self.settling)
                    last_end = time.monotonic()
                    if queued:
                        self.wake_outbox()
                    narrow = max(0, narrow - consumed)
                    batch = 1 if narrow else self.batch
                    if consumed >= batch:  # more waiting: go on, but leave the receive path its share
                        more, pause = True, (last_end - started) * self.yield_ratio
            except Exception as exc:
                more = True
                if unavailable(exc):  # the database, not a change: wait for it, say so once, skip nothing
                    if not self._store_down:
                        log.error("FHIR projector: store unavailable (%s); pending changes wait, retrying every"
                                  " %.0f s", type(exc).__name__, self.idle_interval)
                        self._store_down = True
                    await self._sleep(self.idle_interval)
                    continue
                if batch > 1:  # find the row that fails: the next rows one at a time
                    log.warning("FHIR projector cycle failed; retrying its changes one at a time", exc_info=True)
                    batch, narrow = 1, self.batch
                    continue
                await self._skip_failing()
                pause = self.interval
            await self._sleep(pause)

    async def _skip_failing(self) -> None:
        """Drop the first pending row, which fails alone, so one bad row cannot stop every resource.

        The first one the failed cycle read: held studies' rows (:mod:`engine.fhir.settling`) were not read,
        so they are not the failing one."""
        held = self.settling.holding

        def drop(conn: Connection) -> tuple[str, str] | None:
            p = fhir_pending.c
            query = select(p.id, p.kind, p.key).order_by(p.id).limit(1)
            if held:
                query = query.where(~and_(p.kind == STUDY_KIND, p.key.in_(sorted(held))))
            row = conn.execute(query).first()
            if row is None:
                return None
            conn.execute(delete(fhir_pending).where(fhir_pending.c.id == row.id))
            return str(row.kind), str(row.key)

        try:
            dropped = await self.db.writer.run(drop)
        except Exception:  # the store itself is failing: try again after the interval
            log.exception("FHIR projector could not skip a failing change")
            return
        if dropped is not None:
            log.error("FHIR projector skipped a change it cannot project (%s %s): its resources stay as they"
                      " were until the next change", *dropped, exc_info=True)

    async def stop(self) -> None:
        """Finish the cycle under way, then stop."""
        self.db.writer.remove_commit_listener(self._notify)
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
