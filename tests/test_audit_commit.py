"""Group commit of audit rows: every caller returns only after its row is committed, and concurrent
callers share transactions."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from engine.audit import Actor, event_row
from engine.audit_commit import AuditCommitter, LoopAuditCommitter
from engine.errors import StoreUnavailable
from engine.store.database import Database
from engine.store.schema import audit_events

ACTOR = Actor("pacs-viewer", 0, "host", 1, None, None)


class SlowWriter:
    """A writer whose transactions take ``seconds``; it records each committed group of rows."""

    def __init__(self, seconds: float = 0.05, fail: bool = False) -> None:
        self.seconds, self.fail = seconds, fail
        self.groups: list[list[str]] = []
        self.committed: set[str] = set()
        self.lock = threading.Lock()

    def run_inline(self, fn: Callable[[Any], None]) -> tuple[bool, Any]:
        return False, None  # always through the writer thread (call)

    def call(self, fn: Callable[[Any], None]) -> None:
        rows: list[dict[str, Any]] = []

        class Conn:
            def execute(self, _stmt: Any, params: list[dict[str, Any]]) -> None:
                rows.extend(params)

        fn(Conn())
        time.sleep(self.seconds)
        if self.fail:
            raise StoreUnavailable("disk full")
        with self.lock:
            self.groups.append([r["object_id"] for r in rows])
            self.committed |= {r["object_id"] for r in rows}


def _many(committer: AuditCommitter, count: int, check: Callable[[str], None] = lambda _: None) -> list[Any]:
    """``count`` threads commit one row each at once; each thread's outcome (None or its exception)."""
    outcomes: list[Any] = [None] * count
    start = threading.Barrier(count)

    def one(n: int) -> None:
        start.wait()
        try:
            committer.commit(event_row("fhir.read", "ImagingStudy", f"s{n}", {}, ACTOR))
            check(f"s{n}")
        except Exception as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


def test_concurrent_rows_share_commits_and_each_caller_returns_after_its_own() -> None:
    writer = SlowWriter()
    committer = AuditCommitter(writer)

    def committed_before_return(object_id: str) -> None:
        assert object_id in writer.committed

    outcomes = _many(committer, 16, committed_before_return)

    assert outcomes == [None] * 16
    assert sorted([x for g in writer.groups for x in g]) == sorted(f"s{n}" for n in range(16))  # every row, once
    assert len(writer.groups) < 16 and committer.commits == len(writer.groups)


def test_a_failed_commit_is_raised_to_every_caller_of_its_group() -> None:
    committer = AuditCommitter(SlowWriter(fail=True))

    outcomes = _many(committer, 8)

    assert all(isinstance(o, StoreUnavailable) for o in outcomes)


def test_groups_are_bounded() -> None:
    writer = SlowWriter(seconds=0.02)

    _many(AuditCommitter(writer, max_rows=3), 12)

    assert max(len(g) for g in writer.groups) <= 3 and len([x for g in writer.groups for x in g]) == 12


def test_rows_of_concurrent_callers_are_all_in_the_audit_table(db: Database) -> None:
    committer = AuditCommitter(db.writer)

    def visible(object_id: str) -> None:
        found = db.read(lambda c: c.execute(select(audit_events.c.id)
                                            .where(audit_events.c.object_id == object_id)).all())
        assert len(found) == 1

    outcomes = _many(committer, 24, visible)

    assert outcomes == [None] * 24
    rows = db.read(lambda c: c.execute(select(audit_events.c.object_id, audit_events.c.actor)).all())
    assert sorted(r.object_id for r in rows) == sorted(f"s{n}" for n in range(24))
    assert {r.actor for r in rows} == {"pacs-viewer"}


def test_a_lone_caller_commits_alone(db: Database) -> None:
    committer = AuditCommitter(db.writer)

    committer.commit(event_row("fhir.read", "Patient", "1", {}, ACTOR))

    assert committer.commits == 1


class SlowLoopWriter:
    """An event-loop writer: one transaction at a time, each taking ``seconds``; records committed groups."""

    def __init__(self, seconds: float = 0.02, fail: bool = False) -> None:
        self.seconds, self.fail = seconds, fail
        self.groups: list[list[str]] = []
        self.committed: set[str] = set()
        self.busy = asyncio.Lock()

    def submit_async(self, fn: Callable[[Any], None]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            async with self.busy:
                rows: list[dict[str, Any]] = []
                fn(rows)  # the group is sealed when its transaction starts (the "connection" collects its rows)
                await asyncio.sleep(self.seconds)
                if self.fail:
                    future.set_exception(StoreUnavailable("disk full"))
                    return
                self.groups.append([r["object_id"] for r in rows])
                self.committed |= {r["object_id"] for r in rows}
                future.set_result(None)

        asyncio.get_running_loop().create_task(run())
        return future


def _collect(conn: Any, rows: list[dict[str, Any]]) -> None:
    conn.extend(rows)


async def _many_async(committer: LoopAuditCommitter, count: int, check: Callable[[str], None] = lambda _: None,
                      spread: float = 0.0) -> list[Any]:
    async def one(n: int) -> Any:
        await asyncio.sleep(spread * n)
        try:
            await committer.commit(event_row("fhir.read", "ImagingStudy", f"s{n}", {}, ACTOR))
            check(f"s{n}")
        except Exception as exc:
            return exc
        return None

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def test_loop_rows_share_commits_and_each_caller_returns_after_its_own() -> None:
    writer = SlowLoopWriter()
    committer = LoopAuditCommitter(writer, insert=_collect)

    def committed_before_return(object_id: str) -> None:
        assert object_id in writer.committed

    outcomes = asyncio.run(_many_async(committer, 16, committed_before_return, spread=0.003))

    assert outcomes == [None] * 16
    assert sorted(x for g in writer.groups for x in g) == sorted(f"s{n}" for n in range(16))  # every row, once
    assert 1 < len(writer.groups) < 16 and committer.commits == len(writer.groups)


def test_loop_a_failed_commit_is_raised_to_every_caller_of_its_group() -> None:
    outcomes = asyncio.run(_many_async(LoopAuditCommitter(SlowLoopWriter(fail=True), insert=_collect), 8))

    assert all(isinstance(o, StoreUnavailable) for o in outcomes)


def test_loop_groups_are_bounded() -> None:
    writer = SlowLoopWriter()

    asyncio.run(_many_async(LoopAuditCommitter(writer, max_rows=3, insert=_collect), 12))

    assert max(len(g) for g in writer.groups) <= 3 and len([x for g in writer.groups for x in g]) == 12


def test_loop_a_cancelled_caller_does_not_cancel_its_group() -> None:
    writer = SlowLoopWriter(seconds=0.05)
    committer = LoopAuditCommitter(writer, insert=_collect)

    async def scenario() -> None:
        first = asyncio.create_task(committer.commit(event_row("fhir.read", "Patient", "a", {}, ACTOR)))
        second = asyncio.create_task(committer.commit(event_row("fhir.read", "Patient", "b", {}, ACTOR)))
        await asyncio.sleep(0.01)
        first.cancel()  # its client went away
        await second
        assert first.cancelled()

    asyncio.run(scenario())

    assert writer.groups == [["a", "b"]]


def test_loop_rows_of_concurrent_callers_are_all_in_the_audit_table(db: Database) -> None:
    async def scenario() -> list[Any]:
        committer = LoopAuditCommitter(db.writer)

        def visible(object_id: str) -> None:
            found = db.read(lambda c: c.execute(select(audit_events.c.id)
                                                .where(audit_events.c.object_id == object_id)).all())
            assert len(found) == 1

        return await _many_async(committer, 24, visible)

    assert asyncio.run(scenario()) == [None] * 24
    rows = db.read(lambda c: c.execute(select(audit_events.c.object_id, audit_events.c.actor)).all())
    assert sorted(r.object_id for r in rows) == sorted(f"s{n}" for n in range(24))
