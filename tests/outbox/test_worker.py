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
