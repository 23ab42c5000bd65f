"""kill -9 while a sender streams messages: nothing acknowledged is lost, nothing doubles.

ARCHITECTURE "durable before acknowledged" and "nothing lost on crash": the
sender records which control ids got AA, the engine is SIGKILLed mid-stream
and restarted on the same database, the sender resends everything that got
no AA, and the store must then hold every control id exactly once.

The kill is triggered by progress, not by a clock: once KILL_AFTER_ACCEPTED
messages got AA, a thread kills the engine while the sender keeps streaming.
A fixed delay lands after the end of the stream on a fast machine and before
the first AA on a slow one.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import EngineProcess
from tests.integration.conftest import (
    Sender,
    adt,
    inbound_channel,
    write_channel,
    write_engine_yaml,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

COUNT = 2000
KILL_AFTER_ACCEPTED = 200
#: The longest the engine may take to acknowledge KILL_AFTER_ACCEPTED messages.
PROGRESS_DEADLINE_SECONDS = 60.0


class Killer:
    """Kills the engine from its own thread once ``after`` messages got AA."""

    def __init__(self, engine: EngineProcess, after: int = KILL_AFTER_ACCEPTED) -> None:
        self.engine = engine
        self.after = after
        self.accepted = 0
        self._lock = threading.Lock()
        self._reached = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def count(self) -> None:
        """One more AA (called by the senders)."""
        with self._lock:
            self.accepted += 1
            if self.accepted >= self.after:
                self._reached.set()

    def _run(self) -> None:
        self._reached.wait(PROGRESS_DEADLINE_SECONDS)
        self.engine.kill()

    def join(self) -> None:
        self._reached.set()  # the stream ended first: kill now (the assertions then fail)
        self._thread.join(30)


async def _one_sender(port: int, control_ids: list[str], killer: Killer | None) -> list[str]:
    sender = Sender(port, timeout=10)
    accepted = []
    try:
        for control_id in control_ids:
            ack = await sender.send(adt(control_id, patient_id=f"P{control_id}"))
            if ack.code == "AA":
                accepted.append(control_id)
                if killer is not None:
                    killer.count()
    except (asyncio.IncompleteReadError, ConnectionError, OSError, TimeoutError):
        pass
    finally:
        await sender.close()
    return accepted


def _stream(port: int, control_ids: list[str], senders: int = 1, killer: Killer | None = None) -> list[str]:
    """Each sender sends its share one at a time until its connection breaks.

    Returns the ids that got AA.
    """

    async def scenario() -> list[str]:
        shares = [control_ids[n::senders] for n in range(senders)]
        results = await asyncio.gather(*(_one_sender(port, share, killer) for share in shares))
        return [c for accepted in results for c in accepted]

    return asyncio.run(scenario())


def _stored_counts(url: str) -> dict[str, tuple[str, int]]:
    """control_id → (statuses joined, number of rows), read straight from the store."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT control_id, status, n FROM ("
                " SELECT control_id, MIN(status) AS status, COUNT(*) AS n"
                " FROM messages GROUP BY control_id) AS per_id"
            )).all()
    finally:
        engine.dispose()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture
def crashed_and_resent(engine_process: EngineProcess, mllp_port: int,
                       db_url: str) -> tuple[str, list[str], list[str]]:
    """Stream COUNT messages, SIGKILL mid-stream, restart, resend what got no AA."""
    write_engine_yaml(engine_process, f"database:\n  url: {db_url}\n")
    write_channel(engine_process, "inbound", inbound_channel(mllp_port))
    engine_process.start(wait_port=mllp_port)
    control_ids = [f"CRASH{n:05d}" for n in range(COUNT)]

    killer = Killer(engine_process)
    accepted_before = _stream(mllp_port, control_ids, killer=killer)
    killer.join()
    assert 0 < len(accepted_before) < COUNT, "the kill must land mid-stream"

    engine_process.start(wait_port=mllp_port)
    accepted = set(accepted_before)
    resent = [c for c in control_ids if c not in accepted]
    accepted_after = _stream(mllp_port, resent)
    assert accepted_after == resent
    print(f"AA before kill: {len(accepted_before)}, resent: {len(resent)}")
    return db_url, accepted_before, resent


def test_every_message_acknowledged_before_a_kill_is_stored_once_as_processed(
        crashed_and_resent: tuple[str, list[str], list[str]]) -> None:
    url, accepted_before, _ = crashed_and_resent

    stored = _stored_counts(url)

    assert {c: stored.get(c) for c in accepted_before} == {
        c: ("PROCESSED", 1) for c in accepted_before}


def test_messages_resent_after_a_kill_are_stored_exactly_once(
        crashed_and_resent: tuple[str, list[str], list[str]]) -> None:
    url, _, resent = crashed_and_resent

    stored = _stored_counts(url)

    assert {c: stored.get(c) for c in resent} == {c: ("PROCESSED", 1) for c in resent}
    assert len(stored) == COUNT


def test_concurrent_senders_lose_nothing_acknowledged_across_a_kill(
        engine_process: EngineProcess, mllp_port: int, tmp_path: Path) -> None:
    """Group commit: eight connections share transactions; a kill must not lose any AA'd one."""
    url = f"sqlite:///{tmp_path / 'radbridge.db'}"
    write_engine_yaml(engine_process, f"database:\n  url: {url}\n")
    write_channel(engine_process, "inbound", inbound_channel(mllp_port))
    engine_process.start(wait_port=mllp_port)
    control_ids = [f"GROUP{n:05d}" for n in range(COUNT * 10)]
    killer = Killer(engine_process)
    accepted = _stream(mllp_port, control_ids, senders=8, killer=killer)
    killer.join()
    assert 0 < len(accepted) < len(control_ids), "the kill must land mid-stream"

    stored = _stored_counts(url)

    assert {c: stored.get(c) for c in accepted} == {c: ("PROCESSED", 1) for c in accepted}
