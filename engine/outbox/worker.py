"""The outbox worker: one asyncio task per destination, woken on enqueue and by a poll.

Each round leases due rows, delivers them in id order, and records each
outcome in its own short transaction. Within a round, once a row of an
ordering key fails, the later rows of that key are released untouched, so
order per key holds across retries and restarts (leases expire).

A send never starts unless it can end, timeout included, well inside the
round's lease: the rest of the round is released and claimed afresh. Otherwise
a slow destination could let a lease run out mid-send, and another engine on
the same database would lease the row and deliver it a second time.

A success is recorded without waiting for its commit: the next row's send
starts while the writer commits (and successes of consecutive rows share
commits). Every such record is settled before the round ends, so while its row
is still leased. A crash in between leaves a delivered row QUEUED, and it is
sent again: deliveries are at-least-once, as they always were (a crash between
the peer's answer and the commit has the same effect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from engine.config.models import LEASE_MARGIN_SECONDS, SEND_BACKSTOP_SECONDS, OutboxConfig, RetryConfig
from engine.errors import DeliveryError, PermanentDelivery, RetryableDelivery
from engine.outbox.destination import Destination
from engine.outbox.rows import Claimed, claim, record_failure, record_success, release
from engine.store.database import Database, unavailable

__all__ = ["OutboxWorker", "Route"]

log = logging.getLogger(__name__)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@dataclass(frozen=True, slots=True)
class Route:
    """A destination and its retry policy."""

    destination: Destination
    retry: RetryConfig
    timeout_seconds: float = 30.0  # the destination's own limit on one send


class OutboxWorker:
    """Delivers queued rows for every configured destination."""

    def __init__(self, db: Database, routes: dict[str, Route], config: OutboxConfig) -> None:
        self.db = db
        self.routes = routes
        self.config = config
        self._events = {name: asyncio.Event() for name in routes}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """New work or a due retry may be waiting: run a round now.

        Safe from any thread (plain scheduler jobs and the DICOM handlers run in threads):
        an ``asyncio.Event`` set from outside its loop neither wakes the loop nor is safe
        against the loop's own use of it, so such calls are handed to the loop.
        """
        loop = self._loop
        if loop is None or _running_loop() is loop:
            self._set_events()
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to wake
            loop.call_soon_threadsafe(self._set_events)

    def _set_events(self) -> None:
        for event in self._events.values():
            event.set()

    def start(self) -> None:
        """Start one task per destination."""
        self._loop = asyncio.get_running_loop()
        for name in self.routes:
            self._tasks.append(asyncio.create_task(self._run(name), name=f"outbox-{name}"))

    async def stop(self) -> None:
        """Cancel the tasks and close the destinations."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for route in self.routes.values():
            with contextlib.suppress(Exception):
                await route.destination.close()

    async def _run(self, name: str) -> None:
        event = self._events[name]
        store_down = False  # the last round found the database unavailable (said once per outage)
        while True:
            try:
                delivered = await self.run_round(name)
                if store_down:
                    log.info("outbox %s: store available again", name)
                    store_down = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not unavailable(exc):
                    log.exception("outbox %s: round failed", name)
                elif not store_down:  # not a traceback every poll while the database is away
                    log.error("outbox %s: store unavailable (%s); deliveries wait, retrying every poll", name,
                              type(exc).__name__)
                    store_down = True
                delivered = 0
            if delivered:
                continue
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: a cancel is never swallowed (3.11)
                async with asyncio.timeout(self.config.poll_interval_seconds):
                    await event.wait()
            event.clear()

    async def run_round(self, name: str) -> int:
        """Lease and attempt due rows of one destination; return how many were attempted."""
        now = datetime.now(UTC)
        lease = self.config.lease_seconds
        leased_until = time.monotonic() + lease  # taken before the claim: errs on the safe side
        rows = await self.db.writer.run(
            partial(claim, destination=name, limit=self.config.batch_size, now=now, lease=lease)
        )
        latest_start = leased_until - self.routes[name].timeout_seconds - SEND_BACKSTOP_SECONDS - LEASE_MARGIN_SECONDS
        blocked: set[str] = set()
        skipped: list[int] = []
        recording: list[asyncio.Future[None]] = []  # successes being committed (see the module docstring)
        try:
            await self._attempt_rows(name, rows, latest_start, blocked, skipped, recording)
        finally:
            await asyncio.gather(*recording)
        if skipped:
            await self.db.writer.run(partial(release, ids=skipped))
        return len(rows) - len(skipped)

    async def _attempt_rows(self, name: str, rows: list[Claimed], latest_start: float, blocked: set[str],
                            skipped: list[int], recording: list[asyncio.Future[None]]) -> None:
        for index, row in enumerate(rows):
            if time.monotonic() > latest_start:
                skipped += [r.id for r in rows[index:]]
                # Nothing sent at all: the claim itself took most of the lease (a very busy store).
                level = logging.WARNING if index == 0 else logging.INFO
                log.log(level, "outbox %s: lease nearly over, %d rows go back to the queue", name, len(rows) - index)
                break
            if row.ordering_key and row.ordering_key in blocked:
                skipped.append(row.id)
                continue
            if not await self._attempt(name, row, recording):
                blocked.add(row.ordering_key)

    async def _attempt(self, name: str, row: Claimed, recording: list[asyncio.Future[None]]) -> bool:
        """Send one row; a failure is recorded before the next send, a success joins ``recording``.

        Successes are committed while the next rows are sent (the round awaits them before it
        ends, well inside the lease): one durable commit per delivery no longer paces a
        destination. A crash before such a commit sends the row again (at-least-once, as a
        crash between a send and its record always did); order per key is unchanged because
        sends stay one after the other.
        """
        route = self.routes[name]
        try:
            try:  # destinations bound a send by their timeout themselves; this is the backstop
                async with asyncio.timeout(route.timeout_seconds + SEND_BACKSTOP_SECONDS):
                    response = await route.destination.send(row.payload, row.media_type)
            except TimeoutError:
                raise RetryableDelivery(*[f"no answer within {route.timeout_seconds:g} s"] * 2) from None
        except Exception as exc:  # a destination bug counts as a retryable failure
            permanent = isinstance(exc, PermanentDelivery)
            if not isinstance(exc, DeliveryError):
                log.exception("outbox %s: destination raised unexpectedly", name)
            status = await self.db.writer.run(
                partial(record_failure, row=row, error=str(exc), permanent=permanent, retry=route.retry,
                        now=datetime.now(UTC))
            )
            # The error text (a receiver's MSA-3, an HTTP body) may name the patient: it is kept
            # in the row's last_error (radbridge outbox list), the log gets the reason worded from no
            # message data (DeliveryError.public), else the type.
            reason = (exc.public if isinstance(exc, DeliveryError) else "") or type(exc).__name__
            log.warning("outbox %s: row %s attempt %s failed (%s): %s", name, row.id, row.attempts + 1,
                        status, reason)
            return False
        recording.append(self.db.writer.submit_async(partial(record_success, row_id=row.id, response=response,
                                                             now=datetime.now(UTC))))
        return True
