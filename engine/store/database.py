"""The database: engines, migrations, a group-commit writer and readers.

Every change goes through :class:`Writer`, one thread that runs work items
(plain functions of a ``Connection``) in transactions. Items that arrive
together share one transaction and one commit (group commit), which is what
lets eight concurrent senders go faster than eight fsyncs a message. If a
batch fails, its items are retried one by one so a faulty item cannot take
its neighbours down. A commit that fails resolves every item of the batch
with :class:`~engine.errors.StoreUnavailable`: the caller must not answer
success (ARCHITECTURE "durable before acknowledged").

SQLite runs in WAL mode with ``synchronous=FULL`` by default (durable across
power loss); PostgreSQL is selected by URL. WAL checkpoints run in a thread of
their own (:class:`Checkpointer`), so a commit, and the ACK behind it, does not
wait for one.

PHI and secrets: unless logging is at DEBUG when the database is opened, the
engines are created with ``hide_parameters=True``, so a refused statement's
error (and any traceback showing it) names the statement but not its values
(patient ids, names, message text). A SQLite database file is created 0600 in
a directory created 0700; SQLite gives its ``-wal`` and ``-shm`` files the
database file's mode. Existing files with group/other bits are tightened (see
:mod:`engine.datadir`). :attr:`Database.display_url` is the URL with its
password masked, the only form of it to log.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import ConnectionPoolEntry

from engine.datadir import restrict
from engine.errors import ConfigError, StoreUnavailable

__all__ = ["Checkpointer", "Database", "RunAgain", "WriteLock", "Writer", "masked_url", "unavailable"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[Connection], Any]


class RunAgain(Exception):
    """Raised by a unit of work to have its transaction rolled back and the work run once more, alone,
    before anything queued after it: an optimistic first attempt asking for its careful form
    (``engine.channel.persist``: the handlers without, then with, their savepoint)."""


@dataclass(slots=True)
class _Item:
    fn: Work
    future: Future[Any] | asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop | None = None
    after_commit: Callable[[Any], None] | None = None
    again: bool = False  # already run once more for a RunAgain

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        """Complete the caller's future from the writer thread."""
        if self.loop is None:
            fut = self.future
            assert isinstance(fut, Future)
            fut.set_exception(error) if error is not None else fut.set_result(result)
        else:
            fut = self.future
            assert isinstance(fut, asyncio.Future)
            with contextlib.suppress(RuntimeError):  # that event loop has closed: nobody is waiting
                self.loop.call_soon_threadsafe(_settle, fut, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    future.set_exception(error) if error is not None else future.set_result(result)


def _settle_all(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in settled:
        _settle(future, result, None)


def _resolve_all(batch: list[_Item], results: list[Any]) -> None:
    """Complete a committed batch: one wake-up per event loop, not one per item.

    A batch of one item first runs its ``after_commit`` here, in the writer thread:
    a lone sender's ACK then leaves as soon as it is durable, without waiting for
    the event loop to wake up (about 150 µs on a virtual machine). Shared batches
    leave that work to the event loop, whose thread is otherwise idle meanwhile.
    """
    if len(batch) == 1 and batch[0].after_commit is not None:
        try:
            batch[0].after_commit(results[0])
        except Exception:  # the caller's hook: never the writer's problem
            log.exception("after-commit hook failed")
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for item, result in zip(batch, results, strict=True):
        if item.loop is None:
            item.resolve(result)
        else:
            by_loop.setdefault(item.loop, []).append((item.future, result))  # type: ignore[arg-type]
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that event loop has closed: nobody is waiting
            loop.call_soon_threadsafe(_settle_all, settled)


_STOP = object()

#: Set in a connection's info while :func:`_in_driver_transaction` runs a transaction on it.
_DRIVER_TXN = "radbridge_driver_transaction"


def _in_driver_transaction(conn: Connection, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` in a transaction begun and committed on the SQLite driver itself.

    SQLAlchemy's own begin/commit costs ~25 µs a message on the inline path (its
    transaction objects, events and state checks), about as much as the COMMIT
    statement's own work before its fsync. The hot statements run on the
    driver's cursor anyway (:mod:`engine.store.fast`). A Core statement inside
    ``fn`` still works: SQLAlchemy begins its transaction then, the ``begin``
    hook sees this flag and joins the open one instead of beginning again, and
    SQLAlchemy commits (or rolls back) what it began.
    """
    raw = conn.connection.dbapi_connection
    assert raw is not None
    conn.info[_DRIVER_TXN] = True
    try:
        raw.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            if conn.in_transaction():
                conn.commit()
            else:
                raw.commit()
        except BaseException:
            if conn.get_transaction() is not None:  # active, or left inactive by a failed COMMIT
                conn.rollback()
            if raw.in_transaction:
                raw.rollback()
            raise
    finally:
        conn.info[_DRIVER_TXN] = False
    return result


def _settled(conn: Connection) -> bool:
    """No transaction is left open on ``conn``, by SQLAlchemy or on the driver."""
    try:
        raw = conn.connection.dbapi_connection
        return conn.get_transaction() is None and raw is not None and not raw.in_transaction
    except Exception:
        return False

#: Seconds the writer's kept PostgreSQL connection may sit idle before it is checked (through the
#: pool's pre-ping) before its next transaction. Under load it is reused as is.
KEPT_CONNECTION_IDLE_SECONDS = 1.0

#: Seconds a new PostgreSQL connection may take (libpq ``connect_timeout``) unless the URL sets it: a hung
#: server (a frozen host, a stopped postmaster) then fails a connection instead of blocking it for ever.
CONNECT_TIMEOUT_SECONDS = 10

#: libpq's TCP settings unless the URL sets them: a server whose host froze or whose network went away
#: without closing the connection (no RST: a partition, a failed-over VM) is noticed on connections
#: already open, not only on new ones. Keepalive probes after 15 s of silence, every 5 s, 3 unanswered
#: end the connection (a statement waiting for an answer included); data unacknowledged for 30 s too
#: (``tcp_user_timeout``, milliseconds). The statement then fails as for a dropped connection: the
#: sender gets its AE or 0xA700 and resends, instead of every receive thread waiting for ever.
TCP_DEFAULTS: dict[str, int] = {"keepalives": 1, "keepalives_idle": 15, "keepalives_interval": 5,
                                "keepalives_count": 3, "tcp_user_timeout": 30000}

#: SQLite's busy timeout on every connection (the writer thread waits this long for a lock).
BUSY_TIMEOUT_MS = 30000

#: A write transaction that waited this long for the write lock (another connection or process held it:
#: the CLI, a backup, a DICOM receive worker) is logged as a WARNING naming the wait and the messages it
#: held up: their ACKs left that much later, and a sender's timeout may have come first.
SLOW_LOCK_SECONDS = 2.0
#: How many held-up items a slow-lock WARNING names (the count is always given).
_NAMED_IN_WARNING = 5


#: PostgreSQL's SQLSTATEs for a transaction it rolled back to break a deadlock or a serialization
#: conflict: nothing of it happened, and running it again is how such a victim is meant to go on.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def _retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure (PostgreSQL), raw or wrapped by SQLAlchemy."""
    raw = getattr(exc, "orig", exc)
    return getattr(raw, "sqlstate", None) in _RETRYABLE_SQLSTATES


def unavailable(exc: BaseException) -> bool:
    """The store itself is failing (not this piece of work): the database could not be reached or could not
    run the transaction (server gone, connection lost or refused, pool exhausted, locked, out of space, a
    deadlock or timeout), whether raised by a read or by the writer (a StoreUnavailable whose cause says so).

    Background loops use it to wait for the database to come back, with one log line, instead of
    treating every round's failure as a fault of the work they were doing. A failure of the work itself
    (a value the database refuses: DataError, a ProgrammingError, an integrity error) is not: retried
    for ever, it would stall what comes after it."""
    if isinstance(exc, StoreUnavailable):
        cause = exc.__cause__
        if cause is None or not isinstance(cause, Exception):
            return True  # the writer closed, or a failure with no driver error behind it
        exc = cause
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated
    # A driver's own exception (the receive path's raw statements): by its class name, as PEP 249 names them.
    return any(cls.__name__ in ("OperationalError", "InterfaceError") for cls in type(exc).__mro__)


def failure_reason(exc: BaseException) -> str:
    """A database failure for the log: its type and, when the store itself failed (:func:`unavailable`: locked,
    refused, lost, full, timed out), the driver's first line ("database is locked", "connection refused"),
    which names the cause and no data. Any other failure (a value refused) gives its type only: the driver
    may quote the value."""
    name = type(exc).__name__
    if not unavailable(exc):
        return name
    raw = getattr(exc, "orig", None) or exc
    first = next(iter(str(raw).strip().splitlines()), "")
    return f"{name} ({first})" if first and first != name else name


def _locked(exc: BaseException) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED, raw or wrapped by SQLAlchemy."""
    raw = getattr(exc, "orig", exc)
    return isinstance(raw, sqlite3.OperationalError) and (
        getattr(raw, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        or "locked" in str(raw)
    )


class WriteLock:
    """An exclusive ``flock`` on a file beside a SQLite database, taken around every write transaction
    by each process that opts in (the engine and its DICOM receive workers).

    SQLite alone would be enough for correctness: a writer that finds the database locked waits in
    its busy handler, which sleeps 1, 2, 5, 10 … ms between looks, so a commit of another process
    that holds the lock for a millisecond costs the waiter several. A waiter blocked in ``flock``
    is woken by the kernel the moment the holder releases it. Threads of one process share the
    lock (the :class:`Writer`'s own lock orders them); SQLite's locking still guards every writer
    that does not take this one (the CLI).
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting for another process's release unless ``blocking`` is False)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class Writer:
    """One thread that applies work items in group-committed transactions."""

    def __init__(self, engine: Engine, max_batch: int = 256, gather_seconds: float = 0.002,
                 write_lock: WriteLock | None = None) -> None:
        self._engine = engine
        self._write_lock = write_lock
        self._inline_ok = engine.dialect.name == "sqlite"
        self.slow_lock_seconds = SLOW_LOCK_SECONDS
        self._max_batch = max_batch
        self._gather_seconds = gather_seconds
        self._last_batch = 1
        self._conn: Connection | None = None
        self._conn_used = 0.0  # time.monotonic() when the kept connection was last handed to a transaction
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Held while a transaction runs, by this thread or by a caller running one inline.
        self._busy = threading.Lock()
        self._closed = False
        self._closing = threading.Lock()  # orders close()'s stop marker and every later submit
        self._waits = True  # the writer connection's busy timeout is BUSY_TIMEOUT_MS (else 0)
        self.inline_commits = 0
        self._listeners: tuple[Callable[[], None], ...] = ()
        self._thread = threading.Thread(target=self._loop, name="radbridge-writer", daemon=True)
        self._thread.start()

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit (in the committing thread: the writer's or the event loop's).

        It must be cheap and must not block or raise: it runs on the receive path (the FHIR
        projector uses it to wake up instead of polling an idle database).
        """
        self._listeners = (*self._listeners, listener)

    def remove_commit_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (no error if it was not registered)."""
        self._listeners = tuple(known for known in self._listeners if known is not listener)

    def notify_commit_listeners(self) -> None:
        """Call the commit listeners as if this writer had committed: for a commit made by another
        process on the same database (a DICOM receive worker, :mod:`channels.dicom.receive_pool`)."""
        self._committed()

    def _committed(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not fail a committed transaction
                log.exception("commit listener failed")

    def submit(self, fn: Callable[[Connection], T]) -> Future[T]:
        """Queue ``fn``; the future resolves after its transaction committed (or fails at once, with
        StoreUnavailable, once the writer is closed)."""
        future: Future[T] = Future()
        self._enqueue(_Item(fn, future))
        return future

    def _enqueue(self, item: _Item) -> None:
        """Queue ``item``, unless :meth:`close` was called: work queued behind the stop marker would
        never run and its caller (a job still running in a thread at shutdown) would wait forever."""
        with self._closing:
            if not self._closed:
                self._queue.put(item)
                return
        item.resolve(error=StoreUnavailable("the database writer is closed (radbridge is stopping)"))

    def call(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a committed transaction, blocking (CLI, DICOM threads)."""
        return self.submit(fn).result()

    def submit_async(
        self, fn: Callable[[Connection], T], after_commit: Callable[[T], None] | None = None
    ) -> asyncio.Future[T]:
        """Queue ``fn`` from the event loop; the asyncio future resolves after the commit.

        ``after_commit`` (optional) may run in the writer thread with the result, after
        the commit and before the future resolves (see :func:`_resolve_all`).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._enqueue(_Item(fn, future, loop, after_commit))
        return future

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a committed transaction from asyncio code."""
        return await self.submit_async(fn)

    def run_inline(self, fn: Callable[[Connection], T]) -> tuple[bool, T | BaseException | None]:
        """Run ``fn`` in a committed transaction in the calling thread, if that cannot wait.

        For a lone sender: its message then needs no hand-over to this thread and
        back (two thread wake-ups and GIL hand-overs, 10-15 % of a message's
        cost on a virtual machine). The caller is the event loop, which must
        never wait for a lock, so this runs only on SQLite (no network round
        trips), only when nothing is queued and no transaction is running here,
        and with SQLite's busy timeout at zero: if another connection or
        process holds the write lock, the attempt is rolled back and
        ``(False, None)`` returned, and the caller submits as usual (the writer
        thread then waits for the lock). Concurrent work keeps sharing commits.
        Otherwise ``(True, result)``; a failure is returned as the exception
        the queued path would raise (database errors become StoreUnavailable).
        """
        if not self._inline_ok or self._closed or not self._queue.empty():
            return False, None
        if not self._busy.acquire(blocking=False):
            return False, None
        if self._write_lock is not None and not self._write_lock.acquire(blocking=False):
            self._busy.release()  # another process is writing: the writer thread waits for it instead
            return False, None
        try:
            try:
                conn = self._connection(wait=False)
            except Exception:  # cannot even start: the writer thread tries, and reports, as always
                self._drop_connection()
                return False, None
            try:
                try:
                    result = _in_driver_transaction(conn, fn)
                except RunAgain:  # rolled back; once more, still holding the lock: nothing came between
                    result = _in_driver_transaction(conn, fn)
            except Exception as exc:
                if not _settled(conn):  # the rollback itself failed: start over on a new connection
                    self._drop_connection()
                if _locked(exc):  # rolled back, nothing happened: the writer thread will wait instead
                    return False, None
                translated = self._translate(exc)
                if isinstance(translated, StoreUnavailable):
                    self._drop_connection()
                return True, translated
            self.inline_commits += 1
            self._committed()
            return True, result
        finally:
            if self._write_lock is not None:
                self._write_lock.release()
            self._busy.release()

    def close(self) -> None:
        """Finish queued work, then stop the thread."""
        with self._closing:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout=30)
        # An inline transaction may still be running in another thread; do not wait forever for it.
        if self._busy.acquire(timeout=5):
            try:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
            finally:
                self._busy.release()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            with self._busy:
                if self._run_pipelined(first):
                    return

    def _next(self, count: int, deadline: float) -> Any:
        """The next queued item, waiting until ``deadline`` while the batch is smaller than the last one.

        Concurrent senders each wait for their ACK before sending again, so right
        after a commit only one of them may have resubmitted yet. Waiting up to
        ``gather_seconds`` for as many items as the previous batch had keeps the
        batches, and so the commits, shared; a lone sender never waits. Returns
        None when nothing more is coming for this batch.
        """
        if count >= self._max_batch:
            return None
        remaining = deadline - time.monotonic()
        try:
            if count < self._last_batch and remaining > 0:
                return self._queue.get(timeout=remaining)
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def _run_pipelined(self, first: _Item) -> bool:
        """Run ``first`` and whatever arrives meanwhile in one transaction; True when told to stop.

        Items are applied as they arrive rather than after gathering: the event
        loop prepares the next messages while this thread writes the previous
        ones, and the batch still shares one commit. If any item fails, the whole
        transaction is rolled back and each item of the batch is run on its own
        (:meth:`_run_batch`), so a faulty item cannot take its neighbours down.
        """
        deadline = time.monotonic() + self._gather_seconds
        batch: list[_Item] = [first]
        results: list[Any] = []
        stop = committing = False
        started, waited = 0.0, -1.0
        try:
            conn = self._connection()
            started = time.monotonic()  # the wait for the lock, not for a connection
            with self._locked(), conn.begin():
                waited = time.monotonic() - started
                results.append(first.fn(conn))
                while (nxt := self._next(len(batch), deadline)) is not None:
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.append(nxt)
                    results.append(nxt.fn(conn))
                committing = True
        except Exception as exc:
            self._said_wait(started, waited, batch)
            self._fail_batch(batch, exc, committing)
        else:
            self._said_wait(started, waited, batch)
            self._committed()
            _resolve_all(batch, results)
        self._last_batch = len(batch)
        return stop

    def _said_wait(self, started: float, waited: float, batch: list[_Item]) -> None:
        """A WARNING when the transaction of ``batch`` waited :attr:`slow_lock_seconds` or more for the write
        lock (``waited`` -1: it never got it, and failed after ``started``; ``started`` 0: it failed before
        asking, without a connection).

        Names the items by their ``log_label`` (a channel and control id: no PHI, docs/security.md).
        """
        if not started:
            return
        if waited < 0:
            waited = time.monotonic() - started
        if waited < self.slow_lock_seconds:
            return
        labels = [label for item in batch if (label := str(getattr(item.fn, "log_label", "")))]
        named = "; ".join(labels[:_NAMED_IN_WARNING]) + (f"; {len(labels) - _NAMED_IN_WARNING} more"
                                                         if len(labels) > _NAMED_IN_WARNING else "")
        log.warning("database write lock: waited %.1f s for another connection or process to release it before "
                    "storing %d item(s)%s; their ACKs were held up as long", waited, len(batch),
                    f" ({named})" if named else "")

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """The cross-process write lock around a transaction, when this database has one."""
        return self._write_lock.held() if self._write_lock is not None else contextlib.nullcontext()

    def _connection(self, wait: bool = True) -> Connection:
        """The writer's own connection, kept open between batches (no pool round trip per commit).

        ``wait``: whether SQLite may wait for a lock held elsewhere (the writer thread) or
        must fail at once (the event loop, :meth:`run_inline`). The setting is switched only
        when it changes, so a lone sender's messages cost no extra statement.
        """
        if (self._conn is not None and not self._inline_ok and not self._conn.closed
                and time.monotonic() - self._conn_used > KEPT_CONNECTION_IDLE_SECONDS):
            # A server connection idle this long may have died meanwhile (PostgreSQL restarted at 3 a.m.):
            # back to the pool, whose pre-ping hands out a live one, so the first message after a quiet
            # outage is not refused for a dead connection nobody used while the server was away.
            self._release_connection()
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self._engine.connect()
            self._waits = True  # as the connect hook set it
        self._conn_used = time.monotonic()
        if self._inline_ok and wait != self._waits:
            raw = self._conn.connection.dbapi_connection
            assert raw is not None
            raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS if wait else 0}")
            self._waits = wait
        return self._conn

    def _release_connection(self) -> None:
        """Give the kept connection back to the pool (to be pinged before its next use)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # its reset (a rollback) failed: the connection is dead anyway
                with contextlib.suppress(Exception):
                    conn.invalidate()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None

    def _run_batch(self, batch: list[_Item]) -> None:
        committing = False
        started, waited = 0.0, -1.0
        try:
            conn = self._connection()
            started = time.monotonic()
            with self._locked(), conn.begin():
                waited = time.monotonic() - started
                results = [item.fn(conn) for item in batch]
                committing = True
        except Exception as exc:
            self._said_wait(started, waited, batch)
            self._fail_batch(batch, exc, committing)
            return
        self._said_wait(started, waited, batch)
        self._committed()
        _resolve_all(batch, results)

    def _fail_batch(self, batch: list[_Item], exc: Exception, committing: bool = False) -> None:
        """A rolled-back batch: retry its items one by one, in order; run a single item that asked for it
        (:class:`RunAgain`), or that PostgreSQL rolled back to break a deadlock (or a serialization
        conflict), or whose connection turned out dead before its commit was sent (the server restarted
        since it was last used), once more; else report the single item's error.

        ``committing``: the failure came from the COMMIT itself. Its outcome is then unknown (the
        server may have committed before the connection broke), so that item is not run again here:
        its caller answers failure and the sender's resend meets the committed copy, if any."""
        if (len(batch) == 1 and not batch[0].again and not committing and isinstance(exc, DBAPIError)
                and exc.connection_invalidated):
            self._drop_connection()
            batch[0].again = True
            log.warning("database connection lost before the commit (%s); running the transaction again on a"
                        " new connection", type(exc).__name__)
            self._run_batch(batch)
            return
        translated = self._translate(exc)
        if isinstance(translated, StoreUnavailable):
            self._drop_connection()  # reconnect next time (e.g. PostgreSQL restarted)
        if committing and isinstance(exc, DBAPIError) and exc.connection_invalidated:
            # The connection broke during the COMMIT: the server may have committed the whole batch. Running
            # its items again could apply them twice (a message stored twice, an ORU sent twice); each one
            # is answered failure instead, and a resend meets the committed copy if there is one.
            for item in batch:
                item.resolve(error=translated)
            return
        if len(batch) > 1:
            for item in batch:
                self._run_batch([item])
            return
        if (isinstance(exc, RunAgain) or _retryable(exc)) and not batch[0].again:
            batch[0].again = True
            self._run_batch(batch)
            return
        batch[0].resolve(error=translated)

    def _translate(self, exc: Exception) -> Exception:
        """Database failures (wrapped by SQLAlchemy or raw from the driver) become StoreUnavailable."""
        dbapi = self._engine.dialect.dbapi
        raw_error = isinstance(exc, dbapi.Error) and not isinstance(exc, dbapi.IntegrityError) if dbapi else False
        wrapped = isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError)
        if not (raw_error or wrapped):
            return exc
        log.error("store unavailable: %s", failure_reason(exc))
        err = StoreUnavailable(f"database unavailable: {type(exc).__name__}")
        err.__cause__ = exc
        return err


#: Page size of a new SQLite database. A durable commit's cost grows with the bytes its
#: fdatasync flushes, and an order dirties ~20 B-tree pages however little of each it
#: changes: 1 KB pages flush ~25 KB an order instead of ~80 KB (commit 290 -> 250 µs
#: measured on the receive path; worklist queries unchanged).
DEFAULT_PAGE_SIZE = 1024

#: Page cache of each SQLite reader connection, KiB (SQLite's default is 2,000).
READER_CACHE_KIB = 8192

#: The writer's own automatic checkpoint threshold (WAL pages) while a Checkpointer runs.
WRITER_AUTOCHECKPOINT = 4000


class Checkpointer:
    """Copies the SQLite WAL back into the database file from a thread of its own.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses its
    threshold: every few dozen messages one commit also copies hundreds of pages
    and syncs the database file, and that message's ACK waits for it (most of
    the receive path's p99). Here a connection of its own runs PASSIVE
    checkpoints, which never block the writer or readers, every ``interval``
    seconds, and again at once while the writer appended frames meanwhile.
    After a pause the WAL is fully copied and the next commit starts it over;
    under steady load the writer's own threshold (:data:`WRITER_AUTOCHECKPOINT`)
    does, with a checkpoint that is cheap by then because nearly every frame
    was copied already. That threshold is also the bound should this thread
    fall behind or fail.
    """

    def __init__(self, path: str, synchronous: str = "FULL", interval: float = 0.1) -> None:
        self._path = path
        self._synchronous = synchronous
        self._interval = interval
        self._stop = threading.Event()
        self.runs = 0
        self._thread = threading.Thread(target=self._loop, name="radbridge-checkpoint", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        conn: sqlite3.Connection | None = None
        delay = self._interval
        while not self._stop.wait(delay):
            try:
                if conn is None:
                    if not _has_content(self._path):  # not created yet (before the first migration)
                        continue
                    conn = sqlite3.connect(self._path, timeout=1, isolation_level=None, check_same_thread=False)
                    # The database file is synced after the copy as the writer's setting says.
                    conn.execute(f"PRAGMA synchronous={self._synchronous}")
                conn.execute("PRAGMA schema_version").fetchone()  # a read: the connection sees WAL mode
                seen = -1
                for _ in range(16):  # again while the writer appended frames meanwhile, then rest
                    busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.runs += 1
                    if busy or frames <= 0 or frames == seen or self._stop.is_set():
                        break
                    seen = frames
                delay = self._interval
            except sqlite3.Error as exc:  # the writer's own threshold still bounds the WAL
                if delay == self._interval:  # once per failure streak, then back off to a minute
                    log.warning("background checkpoint failed: %s (the writer checkpoints meanwhile)", exc)
                delay = min(max(delay * 2, 1.0), 60.0)
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                conn = None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close(self) -> None:
        """Stop after the checkpoint under way, if any."""
        self._stop.set()
        self._thread.join(timeout=30)


class Database:
    """Engines for one database URL plus the writer and a reader pool."""

    def __init__(
        self, url: str, sqlite_synchronous: str = "FULL", pool_size: int = 5, sqlite_page_size: int = DEFAULT_PAGE_SIZE,
        hide_parameters: bool | None = None, checkpoint: bool = True, write_lock: bool = False,
        application_name: str = "radbridge", answer_timeout: float | None = None,
    ) -> None:
        """Open engines for ``url``; ``hide_parameters`` None: hidden unless logging is at DEBUG now.

        ``checkpoint``: run a :class:`Checkpointer` for a SQLite file (one process per database
        does: the engine process, not its receive workers). ``write_lock``: several processes write
        this SQLite file; take a :class:`WriteLock` (``<file>.write-lock``) around each transaction.

        ``application_name``: how this process's PostgreSQL sessions are named in ``pg_stat_activity``
        (unless the URL names them), so that a DBA who meets "too many clients" sees whose they are.
        ``answer_timeout``: seconds one PostgreSQL request may go unanswered (engine.store.answer_timeout;
        None: its default).

        Raises ConfigError (with the password masked) if ``url`` is not a SQLAlchemy URL.
        """
        self.url = url
        self.display_url = masked_url(url)
        self.page_size = sqlite_page_size
        self.is_sqlite = url.startswith("sqlite")
        self.application_name = application_name
        self.answer_timeout = answer_timeout
        if hide_parameters is None:
            hide_parameters = not logging.getLogger("engine").isEnabledFor(logging.DEBUG)
        self.hide_parameters = hide_parameters
        path = _sqlite_path(url) if self.is_sqlite else ""
        if path:
            _owner_only_file(Path(path))
        self.write_engine = self._create(url, sqlite_synchronous, immediate=True, pool_size=2, background=bool(path))
        self.read_engine = self._create(url, sqlite_synchronous, immediate=False, pool_size=pool_size)
        self.write_lock = WriteLock(Path(f"{path}.write-lock")) if path and write_lock else None
        self.writer = Writer(self.write_engine, write_lock=self.write_lock)
        self.checkpointer = Checkpointer(path, sqlite_synchronous) if path and checkpoint else None
        self._readers = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="radbridge-read")

    def _create(
        self, url: str, synchronous: str, immediate: bool, pool_size: int, background: bool = False
    ) -> Engine:
        if not self.is_sqlite:
            # What the URL does not set: the sessions' name, how long a connection attempt may take
            # (libpq waits forever for a server that accepts the TCP connection but never answers), and
            # how long an open connection may go unanswered (TCP_DEFAULTS).
            given = make_url(url).query
            defaults = {"application_name": self.application_name, "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                        **TCP_DEFAULTS}
            connect_args = {key: value for key, value in defaults.items() if key not in given}
            pg = create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size,
                               hide_parameters=self.hide_parameters, connect_args=connect_args)
            if pg.dialect.driver == "psycopg":  # a server that accepts and never answers: engine.store.answer_timeout
                from engine.store.answer_timeout import DEFAULT_ANSWER_TIMEOUT_SECONDS, bounded_class

                bounded = bounded_class(self.answer_timeout or DEFAULT_ANSWER_TIMEOUT_SECONDS)

                @event.listens_for(pg, "do_connect")
                def _bounded(dialect: Any, record: ConnectionPoolEntry, cargs: Any, cparams: Any) -> Any:
                    return bounded.connect(*cargs, **cparams)

            return pg
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               hide_parameters=self.hide_parameters)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            # Only a database without content takes it (before WAL mode is set); later a no-op.
            cur.execute(f"PRAGMA page_size={int(self.page_size)}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if immediate:
                # The handlers' savepoint makes SQLite keep a statement journal; in a temp
                # file (the default) every write inside it costs file syscalls (~50 µs per
                # INSERT measured); in memory it costs a page copy. Only the writer: big
                # sorts of read queries keep spilling to disk.
                cur.execute("PRAGMA temp_store=MEMORY")
            if not immediate:
                # Readers: a FHIR page walks thousands of index entries (its total) and reads a hundred
                # documents; with SQLite's default 2 MB cache each page's documents evicted the index.
                cur.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
            if background:  # the Checkpointer copies the WAL; this is only the bound
                cur.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Straight to the driver: this runs once per transaction on the receive path.
            if not conn.info.get(_DRIVER_TXN):  # else joins _in_driver_transaction's (already begun)
                conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")  # type: ignore[union-attr]

        return engine

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from engine.store.migrate import upgrade

        if self.is_sqlite:
            upgrade(self.write_engine)
            return
        from engine.store.answer_timeout import unbounded

        with unbounded():  # an index built on a large table may take longer than any one answer
            upgrade(self.write_engine)

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a read transaction (blocking); once more if PostgreSQL chose it as a deadlock's
        victim (rolled back: nothing of it happened)."""
        try:
            with self.read_engine.connect() as conn, conn.begin():
                return fn(conn)
        except Exception as exc:
            if not _retryable(exc):
                raise
        with self.read_engine.connect() as conn, conn.begin():
            return fn(conn)

    async def read_async(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a read transaction on the reader pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self.read, fn)

    def close(self) -> None:
        """Drain the writer and dispose of the engines."""
        self.writer.close()
        if self.checkpointer is not None:
            self.checkpointer.close()
        self._readers.shutdown(wait=True)
        self.write_engine.dispose()
        self.read_engine.dispose()
        if self.write_lock is not None:
            self.write_lock.close()


def _sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///path`` URL; "" for an in-memory database."""
    path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
    return "" if path in ("", ":memory:") else str(Path(path).expanduser())


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***``; raise ConfigError if it is no SQLAlchemy URL."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # SQLAlchemy's own message repeats the whole string, password included.
        scheme = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*(?=://)", url)
        named = f"scheme {scheme.group(0)!r}" if scheme else "no scheme"
        raise ConfigError([f"database.url: not a valid SQLAlchemy URL ({named})"]) from None


def _has_content(path: str) -> bool:
    """The SQLite file exists and SQLite has written to it (it is created empty, 0600, first)."""
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


def _owner_only_file(path: Path) -> None:
    """Create the SQLite file 0600 (in a new directory 0700) before SQLite does (0644 less umask).

    SQLite creates ``-wal``, ``-shm`` and journal files with the database file's mode, so
    they follow. Existing files are tightened, with a warning (engine.datadir.restrict).
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        restrict(candidate)
