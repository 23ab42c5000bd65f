from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import select

from engine.config.models import RetryConfig
from engine.outbox.queue import enqueue
from engine.outbox.rows import ERROR, backoff, claim, record_failure, record_success, release, replay
from engine.store.schema import outbox

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
RETRY = RetryConfig(initial_seconds=1, multiplier=2, max_seconds=10, max_attempts=3)


def put(db, key, n=1):
    def work(conn):
        return [enqueue(conn, channel="c", destination="d", payload=f"{key}{i}".encode(), media_type="x",
                        ordering_key=key, now=NOW) for i in range(n)]
    return db.writer.call(work)


def take(db, now=NOW, limit=10):
    return db.writer.call(partial(claim, destination="d", limit=limit, now=now, lease=60))


def test_backoff_is_exponential_and_capped():
    assert [backoff(n, RETRY) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]


def test_rows_are_claimed_in_order_and_leased(db):
    put(db, "p1", 3)
    assert [r.payload for r in take(db)] == [b"p10", b"p11", b"p12"]
    assert take(db) == []


def test_a_waiting_row_blocks_its_key_but_not_others(db):
    put(db, "p1", 2)
    put(db, "p2", 1)
    first = take(db)
    db.writer.call(partial(record_failure, row=first[0], error="down", permanent=False, retry=RETRY, now=NOW))
    db.writer.call(partial(release, ids=[r.id for r in first[1:]]))
    again = take(db)
    assert [r.payload for r in again] == [b"p20"]
    later = take(db, now=NOW + timedelta(seconds=2))
    assert [r.payload for r in later] == [b"p10", b"p11"]


def test_rows_without_key_are_not_ordered(db):
    put(db, "", 2)
    first = take(db, limit=1)
    db.writer.call(partial(record_failure, row=first[0], error="x", permanent=False, retry=RETRY, now=NOW))
    assert [r.payload for r in take(db)] == [b"1"]


def test_retry_limit_and_permanent_failures_end_in_error(db):
    put(db, "p1", 1)
    now = NOW
    for _ in range(RETRY.max_attempts):
        row = take(db, now=now)[0]
        status = db.writer.call(partial(record_failure, row=row, error="x", permanent=False, retry=RETRY, now=now))
        now += timedelta(seconds=20)
    assert status == ERROR
    put(db, "p2", 1)
    row = take(db, now=now)[0]
    assert db.writer.call(partial(record_failure, row=row, error="AR", permanent=True, retry=RETRY, now=now)) == ERROR


def test_replay_requeues_error_rows(db):
    put(db, "p1", 1)
    row = take(db)[0]
    db.writer.call(partial(record_failure, row=row, error="AR", permanent=True, retry=RETRY, now=NOW))
    assert take(db) == []
    assert db.writer.call(partial(replay, row_ids=[row.id], now=NOW)) == 1
    again = take(db)[0]
    db.writer.call(partial(record_success, row_id=again.id, response="AA", now=NOW))
    status = db.read(lambda c: c.execute(select(outbox.c.status, outbox.c.attempts)).one())
    assert tuple(status) == ("SENT", 1)
