"""Retention of REJECTED messages: refused input and what MLLP listeners kept of junk and broken frames."""

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

import engine.domain.housekeeping as housekeeping
from engine.channel.persist import Persister
from engine.channel.prepare import Preparer
from engine.channel.runner import ChannelRunner
from engine.config.models import ChannelConfig, EngineConfig, MessagesConfig
from engine.store.database import Database
from engine.store.schema import messages

MSG = b"MSH|^~\\&|RIS|H|RB|R|20261122083000||ADT^A08|C{n}|P|2.5\rPID|1||MRN1^^^H\r"


def store(db: Database) -> None:
    """Three REJECTED rows (junk, an unfinished frame, an unsupported version) and one PROCESSED."""
    cfg = ChannelConfig.model_validate({"name": "t", "source": {"type": "mllp", "port": 0}})
    runner = ChannelRunner(cfg, Preparer(cfg), Persister(cfg, [], "RB", ""), db)

    async def scenario() -> None:
        await runner.keep(b"junk", "peer", "bytes outside an MLLP frame")
        await runner.keep(b"MSH|^~\\&|half", "peer", "connection closed inside an MLLP frame")
        await runner.receive(MSG.replace(b"{n}", b"1"), "peer")
        await runner.receive(MSG.replace(b"{n}", b"2").replace(b"|2.5", b"|9.9"), "peer")

    asyncio.run(scenario())


def statuses(db: Database) -> list[str]:
    return list(db.read(lambda c: c.execute(select(messages.c.status).order_by(messages.c.id)).scalars().all()))


def test_only_rejected_messages_older_than_the_retention_are_deleted(db: Database) -> None:
    store(db)
    before = statuses(db)
    assert before.count("REJECTED") == 3 and "PROCESSED" in before
    now = datetime.now(UTC)
    keep = timedelta(days=30)
    assert db.writer.call(lambda c: housekeeping.purge_rejected(c, now + timedelta(days=29), keep)) == 0
    assert db.writer.call(lambda c: housekeeping.purge_rejected(c, now + timedelta(days=31), keep)) == 3
    assert statuses(db) == [s for s in before if s != "REJECTED"]


def test_the_retention_job_deletes_in_short_batches_until_none_is_left(db: Database, monkeypatch) -> None:
    for _ in range(3):
        store(db)
    old = datetime.now(UTC) - timedelta(days=40)
    db.writer.call(lambda c: c.execute(update(messages).values(received_at=old)))
    batches: list[int] = []
    real = housekeeping.purge_rejected

    def counted(conn, now, retention, limit=2):
        batches.append(real(conn, now, retention, limit))
        return batches[-1]

    monkeypatch.setattr(housekeeping, "PURGE_BATCH", 2)
    monkeypatch.setattr(housekeeping, "purge_rejected", counted)
    [job] = housekeeping.message_jobs(db, MessagesConfig(), 3600)
    assert job.id == "rejected-retention"
    assert job.run() == 9
    assert batches == [2, 2, 2, 2, 1]
    assert statuses(db) == ["PROCESSED"]  # the same message three times: stored once


def test_the_retention_is_an_engine_setting_with_a_default() -> None:
    assert EngineConfig().messages.rejected_retention_days == 30
    configured = EngineConfig.model_validate({"messages": {"rejected_retention_days": 7}})
    assert configured.messages.rejected_retention_days == 7


def test_a_job_late_because_the_loop_was_busy_still_runs_without_a_missed_warning(caplog) -> None:
    """A busy event loop (a large replay, a slow disk) delays an interval job past apscheduler's default
    1 s grace time: the job runs as soon as the loop is free, and apscheduler's "was missed by" warning (and
    the skipped run that goes with it) does not happen."""
    import logging
    import time

    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    runs: list[float] = []

    async def job() -> None:
        runs.append(time.monotonic())

    async def scenario() -> float:
        scheduler = AsyncIOScheduler(timezone="UTC")
        housekeeping.schedule_jobs(scheduler, [housekeeping.Job("tick", "a test job", 2.0, job)])  # type: ignore[arg-type]
        scheduler.start()
        try:
            await asyncio.sleep(1.5)
            time.sleep(2.0)  # the loop is blocked across the run time (due at 2.0 s, free at 3.5 s)
            free = time.monotonic()
            await asyncio.sleep(0.3)
        finally:
            scheduler.shutdown(wait=False)
        return free

    with caplog.at_level(logging.WARNING, logger="apscheduler"):
        free = asyncio.run(scenario())
    assert not [r for r in caplog.records if "missed" in r.getMessage()]
    assert len(runs) == 1 and runs[0] - free < 0.3  # the late run, as soon as the loop was free
