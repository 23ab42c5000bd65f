"""The outbox worker's wake-up: it may come from the event loop or from another thread."""

import asyncio
import threading
import time

from engine.config.models import OutboxConfig, RetryConfig
from engine.outbox.worker import OutboxWorker, Route


class _Idle:
    name = "d"

    async def send(self, payload: bytes, media_type: str) -> str:
        raise AssertionError("nothing is queued")

    async def close(self) -> None:
        pass


class _CountingWorker(OutboxWorker):
    """Records each round instead of claiming rows."""

    def __init__(self, rounds: asyncio.Queue) -> None:
        super().__init__(None, {"d": Route(_Idle(), RetryConfig())}, OutboxConfig(poll_interval_seconds=60))
        self.rounds = rounds

    async def run_round(self, name: str) -> int:
        self.rounds.put_nowait(name)
        return 0


def test_a_wake_from_another_thread_runs_a_round_at_once() -> None:
    """The scheduler's poll job runs in a thread pool: its wake must reach the loop."""

    async def scenario() -> None:
        rounds: asyncio.Queue = asyncio.Queue()
        worker = _CountingWorker(rounds)
        worker.start()
        try:
            await asyncio.wait_for(rounds.get(), 10)  # the round at start
            await asyncio.sleep(0.1)  # now waiting for a wake (or the 60 s poll)
            def wake_later() -> None:
                time.sleep(0.2)  # the loop is idle in its selector by then
                worker.wake()

            waker = threading.Thread(target=wake_later)
            waker.start()  # not joined here: that would block the loop until the wake is done
            await asyncio.wait_for(rounds.get(), 10)
            waker.join()
        finally:
            await worker.stop()

    asyncio.run(scenario())


def test_a_wake_from_the_loop_runs_a_round_at_once() -> None:
    async def scenario() -> None:
        rounds: asyncio.Queue = asyncio.Queue()
        worker = _CountingWorker(rounds)
        worker.start()
        try:
            await asyncio.wait_for(rounds.get(), 10)
            await asyncio.sleep(0.1)
            worker.wake()
            await asyncio.wait_for(rounds.get(), 10)
        finally:
            await worker.stop()

    asyncio.run(scenario())


class _Slow:
    """A destination that takes ``seconds`` per send and notes when each send began."""

    name = "d"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: list[float] = []

    async def send(self, payload: bytes, media_type: str) -> str:
        self.started.append(time.monotonic())
        await asyncio.sleep(self.seconds)
        return "ok"

    async def close(self) -> None:
        pass


def _queue(db, count: int) -> None:
    from datetime import UTC, datetime

    from engine.outbox.queue import enqueue

    def work(conn):
        for i in range(count):
            enqueue(conn, channel="c", destination="d", payload=b"x", media_type="x", ordering_key=f"k{i}",
                    now=datetime.now(UTC))
    db.writer.call(work)


def _statuses(db) -> list[tuple[str, bool]]:
    from sqlalchemy import select

    from engine.store.schema import outbox

    return [(r.status, r.claimed_until is not None)
            for r in db.read(lambda c: c.execute(select(outbox).order_by(outbox.c.id)).all())]


def test_no_send_starts_unless_it_ends_inside_the_lease(db, monkeypatch) -> None:
    """With several engines on one database, a lease that ran out mid-send would let another send again."""
    monkeypatch.setattr("engine.outbox.worker.LEASE_MARGIN_SECONDS", 0.1)
    monkeypatch.setattr("engine.outbox.worker.SEND_BACKSTOP_SECONDS", 0.05)
    _queue(db, 6)
    slow = _Slow(0.25)
    worker = OutboxWorker(db, {"d": Route(slow, RetryConfig(), timeout_seconds=0.3)},
                          OutboxConfig(poll_interval_seconds=60, lease_seconds=1.0))

    async def one_round() -> tuple[float, int]:
        before = time.monotonic()
        return before, await worker.run_round("d")

    before, attempted = asyncio.run(one_round())
    assert 1 <= attempted < 6 and len(slow.started) == attempted
    assert all(start - before + 0.3 + 0.05 + 0.1 <= 1.0 for start in slow.started)
    states = _statuses(db)
    assert [s for s, _ in states[:attempted]] == ["SENT"] * attempted
    assert states[attempted:] == [("QUEUED", False)] * (6 - attempted)  # back in the queue, not leased
    asyncio.run(one_round())  # the next round takes them at once with a fresh lease
    assert [s for s, _ in _statuses(db)].count("SENT") > attempted


def test_a_send_that_overruns_its_destination_timeout_is_cut_and_retried_later(db) -> None:
    _queue(db, 1)
    worker = OutboxWorker(db, {"d": Route(_Slow(30), RetryConfig(), timeout_seconds=0.2)},
                          OutboxConfig(poll_interval_seconds=60))
    began = time.monotonic()
    assert asyncio.run(worker.run_round("d")) == 1
    assert time.monotonic() - began < 5
    assert _statuses(db) == [("QUEUED", False)]  # a retryable failure: due again after its backoff


class _Refusing:
    """A destination whose receiver refuses with a body quoting the patient."""

    name = "d"

    async def send(self, payload: bytes, media_type: str) -> str:
        from engine.errors import RetryableDelivery

        raise RetryableDelivery("HTTP 503: patient PHIID98765 DOE^JANE is locked", "HTTP 503")

    async def close(self) -> None:
        pass


def test_a_failed_attempt_is_logged_with_its_reason_worded_from_no_message_data(db, caplog) -> None:
    """The log said only 'RetryableDelivery': the reason was in `outbox list` alone (new-user campaign)."""
    import logging

    _queue(db, 1)
    worker = OutboxWorker(db, {"d": Route(_Refusing(), RetryConfig())}, OutboxConfig(poll_interval_seconds=60))
    with caplog.at_level(logging.WARNING, logger="engine.outbox.worker"):
        asyncio.run(worker.run_round("d"))
    [line] = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert line.endswith("failed (QUEUED): HTTP 503"), line
    assert "PHIID98765" not in caplog.text
