"""Group commit of audit rows: concurrent API requests share one transaction, each still durable first.

Every request that disclosed PHI calls :meth:`AuditCommitter.commit` (a worker thread) or
awaits :meth:`LoopAuditCommitter.commit` (the event loop) with its row and
returns only once that row is committed (the response is sent after it), so no
answer ever leaves unaudited and a crash loses no audit row of an answer sent. What
makes it cheaper than one transaction per request is the hand-over: one caller at a
time is the *leader* and writes every row queued so far in one transaction (one
INSERT executemany, one commit) through the engine's writer; the callers who queued
meanwhile wait, and when the leader's commit is done the first of the rows queued
since then is handed the lead. Under load, N concurrent requests cost about one
commit; a lone request costs one as before.

:class:`LoopAuditCommitter` does the same for requests served on an event loop without
holding a thread while they wait: the rows queued while the writer is busy form the next
group, one writer work item, sealed when the writer takes it; every request of the group
awaits that item's commit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection

from engine.audit import INSERT_EVENT
from engine.store.fast import FastInsert
from engine.store.schema import audit_events

#: The audit INSERT compiled once, on the driver's cursor (a group's rows in one executemany).
_INSERT_EVENTS = FastInsert(audit_events)


def insert_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert ``audit_events`` rows in the caller's transaction."""
    _INSERT_EVENTS.execute_many(conn, rows)

__all__ = ["AsyncRowWriter", "AuditCommitter", "LoopAuditCommitter", "RowWriter", "insert_events"]


class RowWriter(Protocol):
    """The part of :class:`engine.store.database.Writer` used here."""

    def run_inline(self, fn: Any) -> tuple[bool, Any]:
        """Commit ``fn`` in the calling thread if the writer is idle: (done, result or exception)."""
        ...

    def call(self, fn: Any) -> Any:
        """Commit ``fn`` through the writer's thread, blocking."""
        ...


@dataclass(eq=False)
class _Waiting:
    row: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    error: BaseException | None = None


class AuditCommitter:
    """Commits the audit rows of concurrent callers together; :meth:`commit` blocks until the row is durable."""

    def __init__(self, writer: RowWriter, max_rows: int = 256) -> None:
        self._writer, self._max_rows = writer, max_rows
        self._lock = threading.Lock()
        self._queued: list[_Waiting] = []
        self._leading = False
        self.commits = 0  # transactions written (the rows of a group share one)

    def commit(self, row: dict[str, Any]) -> None:
        """Return once ``row`` (an ``audit_events`` row) is committed; raise the store's error if it was not."""
        me = _Waiting(row)
        with self._lock:
            self._queued.append(me)
            lead, self._leading = not self._leading, True
        while not lead:
            me.done.wait()
            if not me.lead:
                break
            me.done.clear()
            me.lead, lead = False, True
        if lead:
            self._lead()
        if me.error is not None:
            raise me.error

    def _lead(self) -> None:
        """Write every row queued so far (up to ``max_rows``), wake their callers, pass the lead on."""
        with self._lock:
            group, self._queued = self._queued[:self._max_rows], self._queued[self._max_rows:]
        error = self._write([w.row for w in group])
        for waiting in group:
            waiting.error = error
            waiting.done.set()
        with self._lock:
            if self._queued:
                following = self._queued[0]
                following.lead = True
                following.done.set()
            else:
                self._leading = False

    def _write(self, rows: list[dict[str, Any]]) -> BaseException | None:
        def insert(conn: Connection) -> None:
            conn.execute(INSERT_EVENT, rows)

        try:
            done, outcome = self._writer.run_inline(insert)
            if not done:
                self._writer.call(insert)
            elif isinstance(outcome, BaseException):
                return outcome
        except Exception as exc:  # every caller of the group gets it: none of their answers may leave
            return exc
        self.commits += 1
        return None


class AsyncRowWriter(Protocol):
    """The part of :class:`engine.store.database.Writer` used by :class:`LoopAuditCommitter`."""

    def submit_async(self, fn: Callable[[Connection], None]) -> asyncio.Future[None]:
        """Queue ``fn`` from the event loop; the future resolves after its transaction committed."""
        ...


@dataclass(eq=False)
class _Group:
    rows: list[dict[str, Any]] = field(default_factory=list)
    committed: asyncio.Future[None] | None = None


class LoopAuditCommitter:
    """Commits the audit rows of concurrent requests of an event loop together (await :meth:`commit`)."""

    def __init__(self, writer: AsyncRowWriter, max_rows: int = 256,
                 insert: Callable[[Connection, list[dict[str, Any]]], None] = insert_events) -> None:
        self._writer, self._max_rows, self._insert = writer, max_rows, insert
        self._lock = threading.Lock()  # the loop adds rows, the writer thread seals the group it takes
        self._open: _Group | None = None
        self.commits = 0  # groups committed

    async def commit(self, row: dict[str, Any]) -> None:
        """Return once ``row`` is committed; raise the store's error if it was not.

        Cancelling one caller (its client went away) never cancels the group's commit.
        """
        with self._lock:
            group, fresh = self._open, False
            if group is None or len(group.rows) >= self._max_rows:
                group, fresh = _Group(), True
                self._open = group
            group.rows.append(row)
        if fresh:
            group.committed = self._writer.submit_async(lambda conn: self._write(group, conn))
        assert group.committed is not None
        await asyncio.shield(group.committed)

    def _write(self, group: _Group, conn: Connection) -> None:
        """In the writer's transaction: seal ``group`` (later rows start the next one) and insert its rows."""
        with self._lock:
            if self._open is group:
                self._open = None
            rows = list(group.rows)
        self._insert(conn, rows)
        self.commits += 1
