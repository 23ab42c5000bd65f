import contextlib
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, insert, select, text

from engine.errors import StoreUnavailable
from engine.store.schema import audit_events


def add_event(conn, n):
    conn.execute(insert(audit_events).values(at=datetime.now(UTC), actor="t", action="a", object_type="x",
                                             object_id=str(n), detail=""))
    return n


def count(db):
    return db.read(lambda c: c.execute(select(func.count()).select_from(audit_events)).scalar())


def test_writer_commits_before_resolving(db):
    assert db.writer.call(lambda c: add_event(c, 1)) == 1
    assert count(db) == 1


def test_concurrent_submissions_all_commit(db):
    futures = [db.writer.submit(lambda c, i=i: add_event(c, i)) for i in range(200)]
    assert sorted(f.result() for f in futures) == list(range(200))
    assert count(db) == 200


def test_a_failing_item_does_not_take_its_batch_down(db):
    barrier = threading.Event()
    blocker = db.writer.submit(lambda c: barrier.wait(5))
    good = [db.writer.submit(lambda c, i=i: add_event(c, i)) for i in range(5)]

    def bad(conn):
        add_event(conn, 99)
        raise ValueError("boom")

    failing = db.writer.submit(bad)
    barrier.set()
    blocker.result()
    assert [f.result() for f in good] == list(range(5))
    with pytest.raises(ValueError):
        failing.result()
    assert count(db) == 5


def test_an_item_asking_to_run_again_runs_alone_once_more_before_the_items_queued_after_it(db):
    """RunAgain (an optimistic attempt asking for its careful form): its batch rolls back, every item
    runs alone in order, and the asking one once more, before the ones after it."""
    from engine.store.database import RunAgain

    order: list[str] = []
    barrier = threading.Event()
    blocker = db.writer.submit(lambda c: barrier.wait(5))

    class Careful:
        tries = 0

        def __call__(self, conn):
            self.tries += 1
            if self.tries == 1:
                add_event(conn, 50)
                raise RunAgain()
            order.append("careful")
            return add_event(conn, 51)

    def plain(n):
        def work(conn):
            order.append(str(n))
            return add_event(conn, n)
        return work

    careful = Careful()
    first = db.writer.submit(plain(1))
    asking = db.writer.submit(careful)
    after = db.writer.submit(plain(2))
    barrier.set()
    blocker.result()
    assert (first.result(), asking.result(), after.result()) == (1, 51, 2)
    ids = db.read(lambda c: c.execute(select(audit_events.c.object_id).order_by(audit_events.c.id)).scalars().all())
    assert ids == ["1", "51", "2"]  # nothing of the rolled-back attempt, nobody overtaken
    assert order[-3:] == ["1", "careful", "2"]


def test_a_lone_item_asking_to_run_again_is_run_once_more_and_a_second_request_is_its_error(db):
    from engine.store.database import RunAgain

    tries = []

    def once(conn):
        tries.append(1)
        if len(tries) == 1:
            add_event(conn, 7)
            raise RunAgain()
        return add_event(conn, 8)

    assert db.writer.call(once) == 8 and len(tries) == 2
    assert count(db) == 1

    def always(conn):
        raise RunAgain()

    with pytest.raises(RunAgain):
        db.writer.call(always)


def test_database_errors_become_store_unavailable(db):
    with pytest.raises(StoreUnavailable):
        db.writer.call(lambda c: c.execute(text("INSERT INTO no_such_table VALUES (1)")))


def test_work_submitted_after_close_fails_at_once_instead_of_waiting_forever(tmp_path):
    """At shutdown a job still running in a thread (archive-fixity re-reading copies) submits its record
    after the writer closed: it gets StoreUnavailable, so the thread ends and the process can exit."""
    import asyncio

    from engine.store.database import Database

    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    db.migrate()
    db.close()
    done: list[BaseException] = []

    def late() -> None:
        try:
            db.writer.call(lambda conn: add_event(conn, 1))
        except BaseException as exc:  # what the thread ended with
            done.append(exc)

    thread = threading.Thread(target=late, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "a submit after close() waits forever"
    assert len(done) == 1 and isinstance(done[0], StoreUnavailable)

    async def late_async() -> None:
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(db.writer.run(lambda conn: add_event(conn, 2)), 5)

    asyncio.run(late_async())


def test_timestamps_come_back_aware_utc(db):
    now = datetime.now(UTC)
    db.writer.call(lambda c: add_event(c, 1))
    at = db.read(lambda c: c.execute(select(audit_events.c.at)).scalar())
    assert at.tzinfo is not None and abs((at - now).total_seconds()) < 5


def _wait(condition, seconds: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_wal_is_copied_by_the_checkpointer_not_inside_commits(tmp_path):
    from engine.store.database import WRITER_AUTOCHECKPOINT, Database

    path = tmp_path / "rb.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.migrate()
        assert db.checkpointer is not None
        assert _wait(lambda: db.checkpointer.runs > 2)  # the migration's pages are copied by now
        settled = path.stat().st_size
        pragma = db.writer.call(lambda c: c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar())
        assert pragma == WRITER_AUTOCHECKPOINT  # far above the ~300 pages written below
        for batch in range(10):
            db.writer.call(lambda c, b=batch: [
                c.execute(insert(audit_events).values(at=datetime.now(UTC), actor="t", action="a", object_type="x",
                                                      object_id=f"{b}-{i}", detail="d" * 4000))
                for i in range(30)])
        # The rows reach the database file only by a checkpoint; the writer's threshold is not reached.
        assert _wait(lambda: path.stat().st_size > settled + 300 * 4000)
        assert count(db) == 300
    finally:
        db.close()
    assert db.checkpointer is not None and not db.checkpointer._thread.is_alive()


def test_no_checkpointer_without_a_database_file():
    from engine.store.database import Database

    db = Database("sqlite://")
    try:
        assert db.checkpointer is None
    finally:
        db.close()


def test_after_an_inline_commit_the_writer_thread_still_waits_for_a_lock(tmp_path):
    """The inline attempt turns SQLite's busy timeout off; the writer thread's next transaction
    turns it back on, so it waits for a lock held elsewhere instead of failing."""
    import sqlite3

    from engine.store.database import Database

    db = Database(f"sqlite:///{tmp_path / 'rb.db'}")
    other = sqlite3.connect(tmp_path / "rb.db", isolation_level=None, check_same_thread=False)
    try:
        db.migrate()
        assert db.writer.run_inline(lambda c: add_event(c, 1)) == (True, 1)
        other.execute("BEGIN IMMEDIATE")
        assert db.writer.run_inline(lambda c: add_event(c, 2)) == (False, None)  # no waiting inline
        threading.Timer(0.5, lambda: other.execute("COMMIT")).start()
        assert db.writer.call(lambda c: add_event(c, 3)) == 3  # waited for the lock
        assert count(db) == 2
    finally:
        other.close()
        db.close()


def _page_size(path):
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA page_size").fetchone()[0]


def test_a_new_database_gets_the_configured_page_size_and_an_old_one_keeps_its_own(tmp_path):
    from engine.store.database import DEFAULT_PAGE_SIZE, Database

    assert DEFAULT_PAGE_SIZE == 1024
    for size in (DEFAULT_PAGE_SIZE, 4096):
        path = tmp_path / f"new-{size}.db"
        db = Database(f"sqlite:///{path}", sqlite_page_size=size)
        try:
            db.migrate()
            db.writer.call(lambda c: add_event(c, 1))
        finally:
            db.close()
        assert _page_size(path) == size
    # A database made with 4096-byte pages is opened, written and read with another setting.
    old = tmp_path / "new-4096.db"
    db = Database(f"sqlite:///{old}", sqlite_page_size=1024)
    try:
        db.migrate()
        db.writer.call(lambda c: add_event(c, 2))
        assert count(db) == 2
    finally:
        db.close()
    assert _page_size(old) == 4096


def test_the_page_size_setting_is_validated():
    from pydantic import ValidationError

    from engine.config.models import DatabaseConfig

    assert DatabaseConfig().sqlite_page_size == 1024
    assert DatabaseConfig(sqlite_page_size=4096).sqlite_page_size == 4096
    with pytest.raises(ValidationError):
        DatabaseConfig(sqlite_page_size=1000)


@pytest.fixture
def sqlite_db(tmp_path):
    """A migrated SQLite database (the inline path is SQLite's only)."""
    from tests.conftest import migrated

    yield from migrated(f"sqlite:///{tmp_path / 'rb.db'}")


def _raw_insert(conn, n):
    conn.connection.dbapi_connection.execute(
        "INSERT INTO audit_events (at, actor, action, object_type, object_id, detail) "
        "VALUES ('2026-01-01 00:00:00.000000', 't', 'a', 'x', ?, '')", (str(n),))


def test_an_inline_transaction_on_the_driver_takes_core_statements_too(sqlite_db):
    """run_inline begins and commits on the driver; a Core statement inside joins that transaction
    (no second BEGIN), and everything commits together."""
    db = sqlite_db

    def both(conn):
        _raw_insert(conn, 1)
        add_event(conn, 2)  # through SQLAlchemy Core
        _raw_insert(conn, 3)
        return "ok"

    assert db.writer.run_inline(both) == (True, "ok")
    assert db.writer.run_inline(lambda c: (_raw_insert(c, 4), "raw only")[1]) == (True, "raw only")
    assert count(db) == 4
    assert db.writer.call(lambda c: add_event(c, 5)) == 5  # the writer thread's own path is unchanged
    assert count(db) == 5


@pytest.mark.parametrize("core", [False, True])
def test_a_failed_inline_transaction_leaves_nothing_behind(sqlite_db, core):
    db = sqlite_db

    def failing(conn):
        _raw_insert(conn, 1)
        if core:
            add_event(conn, 2)
        raise ValueError("boom")

    done, result = db.writer.run_inline(failing)
    assert done and isinstance(result, ValueError)
    assert count(db) == 0
    # the connection is usable again, inline and from the writer thread
    assert db.writer.run_inline(lambda c: add_event(c, 3)) == (True, 3)
    assert db.writer.call(lambda c: add_event(c, 4)) == 4
    assert count(db) == 2


def test_a_stale_driver_transaction_is_not_joined_by_the_writer(sqlite_db):
    """Only the inline path's own transaction is joined: outside it, SQLAlchemy begins as always,
    so a transaction somebody left open on the driver is an error, not silently extended."""
    db = sqlite_db
    conn = db.writer._connection()
    conn.connection.dbapi_connection.execute("BEGIN")
    with pytest.raises(Exception, match="within a transaction"), conn.begin():
        pass
    conn.connection.dbapi_connection.rollback()


def _deferred_fk(db):
    raw = db.writer._connection().connection.dbapi_connection
    raw.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    raw.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, "
                "parent_id INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")


@pytest.mark.parametrize("core", [False, True])
def test_an_inline_commit_that_fails_leaves_the_writer_usable(sqlite_db, core):
    """A COMMIT refused by a deferred foreign key (SQLite keeps the transaction open then), with the
    statement on the driver or through Core: the item fails, the next ones commit, inline and queued."""
    db = sqlite_db
    _deferred_fk(db)

    def orphan(conn):
        sql = "INSERT INTO child (parent_id) VALUES (999)"
        if core:
            conn.execute(text(sql))
        else:
            conn.connection.dbapi_connection.execute(sql)
        return "committed"

    done, result = db.writer.run_inline(orphan)
    assert done and isinstance(result, Exception)
    for n in range(1, 4):
        assert db.writer.run_inline(lambda c, n=n: c.execute(text(f"INSERT INTO parent VALUES ({n})")).rowcount) \
            == (True, 1)
        assert db.writer.call(lambda c, n=n: c.execute(text(f"INSERT INTO parent VALUES ({n + 10})")).rowcount) == 1
    assert db.read(lambda c: c.execute(text("SELECT count(*) FROM child")).scalar()) == 0


def test_commit_listeners_hear_every_commit_and_no_rollback(sqlite_db, caplog):
    """The FHIR projector sleeps until the writer commits: queued and inline commits call the listeners
    (after the data is visible), a rolled-back transaction does not, and a failing listener is logged
    without failing the commit or the other listeners."""
    db = sqlite_db
    heard: list[int] = []
    db.writer.add_commit_listener(lambda: heard.append(count(db)))

    def broken() -> None:
        raise RuntimeError("listener bug")

    db.writer.add_commit_listener(broken)
    assert db.writer.call(lambda c: add_event(c, 1)) == 1
    assert heard == [1]
    assert db.writer.run_inline(lambda c: add_event(c, 2)) == (True, 2)
    assert heard == [1, 2]

    def failing(conn):
        add_event(conn, 3)
        raise ValueError("rolled back")

    with pytest.raises(ValueError):
        db.writer.call(failing)
    assert heard == [1, 2] and count(db) == 2
    assert "commit listener failed" in caplog.text
    db.writer.remove_commit_listener(broken)
    caplog.clear()
    db.writer.call(lambda c: add_event(c, 4))
    assert heard == [1, 2, 3] and "commit listener failed" not in caplog.text


def test_sqlite_readers_get_a_larger_page_cache_than_the_writer(tmp_path) -> None:
    from engine.store.database import READER_CACHE_KIB, Database

    db = Database(f"sqlite:///{tmp_path / 'cache.db'}")
    try:
        db.migrate()
        reader = db.read(lambda c: c.connection.dbapi_connection.execute("PRAGMA cache_size").fetchone()[0])
        writer = db.writer.call(lambda c: c.connection.dbapi_connection.execute("PRAGMA cache_size").fetchone()[0])
    finally:
        db.close()
    assert reader == -READER_CACHE_KIB and writer == -2000


def test_with_a_write_lock_another_process_s_transaction_is_waited_for_and_no_write_is_lost(tmp_path):
    """Another process holding the write lock (a second open of the lock file: flock conflicts
    between open file descriptions, as between processes): the inline commit does not wait, the
    writer thread waits, and is woken by the release at once, not by a busy handler's next look."""
    import time

    from engine.store.database import Database, WriteLock

    db = Database(f"sqlite:///{tmp_path / 'rb.db'}", write_lock=True)
    other = WriteLock(tmp_path / "rb.db.write-lock")
    try:
        db.migrate()
        assert db.writer.run_inline(lambda c: add_event(c, 1)) == (True, 1)
        assert other.acquire(blocking=False) is True
        assert db.writer.run_inline(lambda c: add_event(c, 2)) == (False, None)  # no waiting inline
        pending = db.writer.submit(lambda c: add_event(c, 3))
        time.sleep(0.3)
        assert not pending.done()  # waits for the other process's transaction
        released = time.monotonic()
        other.release()
        assert pending.result(timeout=5) == 3
        assert time.monotonic() - released < 0.1
        assert count(db) == 2
        assert other.acquire(blocking=False) is True  # the writer let go after its commit
        other.release()
    finally:
        other.close()
        db.close()


def test_a_batch_whose_connection_breaks_during_its_commit_is_not_run_again(db, monkeypatch):
    """The server may have committed it before the connection broke (PostgreSQL restarted, network cut):
    running its items again could apply them twice. Each is answered StoreUnavailable, none runs again."""
    from sqlalchemy.engine.base import RootTransaction
    from sqlalchemy.exc import OperationalError

    runs: list[int] = []
    barrier = threading.Event()
    real_commit = RootTransaction._do_commit
    broken = []

    def commit_breaks_once(self):
        if not broken and runs:
            broken.append(True)
            real_commit(self)  # committed on the server, then the acknowledgement is lost
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"),
                                   connection_invalidated=True)
        return real_commit(self)

    def item(conn, n):
        runs.append(n)
        return add_event(conn, n)

    monkeypatch.setattr(RootTransaction, "_do_commit", commit_breaks_once)
    first = db.writer.submit(lambda c: (barrier.wait(5), item(c, 1))[1])
    second = db.writer.submit(lambda c: item(c, 2))
    barrier.set()
    for future in (first, second):
        with pytest.raises(StoreUnavailable):
            future.result(timeout=10)
    assert sorted(runs) == [1, 2]  # each ran once
    assert count(db) == 2  # as the server committed them: a resend finds them


def test_unavailable_tells_the_store_failing_from_the_work_failing():
    """A value the database refuses is the work's fault: a projector or job that took it for an outage
    waited for ever instead of skipping it (review finding)."""
    import sqlite3

    from sqlalchemy.exc import DataError, IntegrityError, OperationalError, ProgrammingError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from engine.store.database import unavailable

    def wrapped(error: Exception) -> StoreUnavailable:
        outer = StoreUnavailable("database unavailable")
        outer.__cause__ = error
        return outer

    lost = OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    refused = DataError("INSERT", {}, Exception("value too long for type character varying(64)"))
    assert unavailable(lost) and unavailable(wrapped(lost)) and unavailable(PoolTimeout())
    assert unavailable(StoreUnavailable("the writer is closed"))
    assert unavailable(sqlite3.OperationalError("database is locked"))
    assert unavailable(wrapped(sqlite3.OperationalError("disk I/O error")))
    assert not unavailable(refused) and not unavailable(wrapped(refused))
    assert not unavailable(wrapped(ProgrammingError("SELECT", {}, Exception("no such column"))))
    assert not unavailable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not unavailable(ValueError("a bad change")) and not unavailable(sqlite3.DataError("bad"))


def test_the_store_unavailable_log_line_says_why_without_the_statement_or_its_values(db, caplog):
    """A SQLite file held locked by another process logged "store unavailable: OperationalError": nothing
    said it was a lock (new-user campaign, 3 a.m.)."""
    import logging
    import sqlite3

    from sqlalchemy.exc import IntegrityError, OperationalError

    from engine.store.database import failure_reason

    locked = OperationalError("INSERT INTO patients (name) VALUES (?)", ("DOE^JANE",),
                              sqlite3.OperationalError("database is locked"))
    assert "DOE^JANE" in str(locked)  # SQLAlchemy's own text quotes the parameters
    assert failure_reason(locked) == "OperationalError (database is locked)"
    assert failure_reason(sqlite3.OperationalError("database or disk is full")) == \
        "OperationalError (database or disk is full)"
    refused = IntegrityError("INSERT", ("DOE^JANE",), sqlite3.IntegrityError("UNIQUE failed: DOE^JANE"))
    assert failure_reason(refused) == "IntegrityError"
    with caplog.at_level(logging.ERROR, logger="engine.store.database"):
        db.writer._translate(locked)
    assert "store unavailable: OperationalError (database is locked)" in caplog.text
    assert "DOE" not in caplog.text


class _Labelled:
    """A work item naming itself for the log, as a message's Attempt does (engine.channel.persist)."""

    log_label = "channel c1 control id CID1"

    def __call__(self, conn):
        return add_event(conn, 7)


def test_a_transaction_that_waited_for_the_write_lock_is_a_warning_naming_its_items(tmp_path, caplog):
    """hl7fix5: an ACK held up by another connection's write lock was said nowhere."""
    import sqlite3

    from engine.store.database import Database

    db = Database(f"sqlite:///{tmp_path / 'rb.db'}")
    other = sqlite3.connect(tmp_path / "rb.db", isolation_level=None, check_same_thread=False)
    try:
        db.migrate()
        db.writer.slow_lock_seconds = 0.3
        assert db.writer.call(_Labelled()) == 7  # no wait: nothing said
        assert "write lock" not in caplog.text
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.5, lambda: other.execute("COMMIT")).start()
        with caplog.at_level("WARNING", logger="engine.store.database"):
            assert db.writer.call(_Labelled()) == 7
        (record,) = [r for r in caplog.records if "write lock" in r.getMessage()]
        assert record.levelname == "WARNING"
        assert "waited 0." in record.getMessage() and "1 item(s) (channel c1 control id CID1)" in record.getMessage()
    finally:
        other.close()
        db.close()
