"""kill -9 while a sender streams messages: nothing acknowledged is lost, nothing doubles.

ARCHITECTURE "durable before acknowledged" and "nothing lost on crash": the
sender records which control ids got AA, the engine is SIGKILLed mid-stream
and restarted on the same database, the sender resends everything that got
no AA, and the store must then hold every control id exactly once.
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
KILL_AFTER_SECONDS = 1.0


async def _one_sender(port: int, control_ids: list[str]) -> list[str]:
    sender = Sender(port, timeout=10)
    accepted = []
    try:
        for control_id in control_ids:
            ack = await sender.send(adt(control_id, patient_id=f"P{control_id}"))
            if ack.code == "AA":
                accepted.append(control_id)
    except (asyncio.IncompleteReadError, ConnectionError, OSError, TimeoutError):
        pass
    finally:
        await sender.close()
    return accepted


def _stream(port: int, control_ids: list[str], senders: int = 1) -> list[str]:
    """Each sender sends its share one at a time until its connection breaks.

    Returns the ids that got AA.
    """

    async def scenario() -> list[str]:
        shares = [control_ids[n::senders] for n in range(senders)]
        results = await asyncio.gather(*(_one_sender(port, share) for share in shares))
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

    killer = threading.Timer(KILL_AFTER_SECONDS, engine_process.kill)
    killer.start()
    accepted_before = _stream(mllp_port, control_ids)
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
    control_ids = [f"GROUP{n:05d}" for n in range(COUNT * 10)]  # outlasts the kill even at full speed
    killer = threading.Timer(KILL_AFTER_SECONDS, engine_process.kill)
    killer.start()
    accepted = _stream(mllp_port, control_ids, senders=8)
    killer.join()
    assert 0 < len(accepted) < len(control_ids), "the kill must land mid-stream"

    stored = _stored_counts(url)

    assert {c: stored.get(c) for c in accepted} == {c: ("PROCESSED", 1) for c in accepted}
