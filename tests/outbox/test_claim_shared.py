"""Claims by several engine processes on one PostgreSQL database (ARCHITECTURE "Scale").

Two connections stand for two processes: the first leases rows and has not
committed yet when the second claims.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection

from engine.outbox.queue import enqueue
from engine.outbox.rows import _claim_lock, claim
from engine.store.database import Database
from tests.conftest import PostgresServer, migrated

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


@pytest.fixture
def pg(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[Database]:
    yield from migrated(postgres.create_database(f"claim_{abs(hash(request.node.name)) % 10**9}"))


def put(db: Database, key: str, n: int, destination: str = "d") -> None:
    def work(conn: Connection) -> None:
        for i in range(n):
            enqueue(conn, channel="c", destination=destination, payload=f"{key}{i}".encode(), media_type="x",
                    ordering_key=key, now=NOW)
    db.writer.call(work)


def payloads(rows: list) -> list[bytes]:
    return [r.payload for r in rows]


def test_a_claim_under_way_elsewhere_holds_back_the_rest_of_its_key(pg: Database) -> None:
    put(pg, "p1", 2)
    with pg.write_engine.connect() as first, pg.write_engine.connect() as second:
        first.begin()
        mine = claim(first, "d", limit=1, now=NOW, lease=60)  # leased, not committed yet
        second.begin()
        theirs = claim(second, "d", limit=10, now=NOW, lease=60)
        first.commit()
        second.commit()
    assert payloads(mine) == [b"p10"]
    assert theirs == []  # p11 must not leave before p10


def test_after_the_commit_the_other_process_claims_other_keys_but_not_the_leased_key(pg: Database) -> None:
    put(pg, "p1", 2)
    put(pg, "p2", 1)
    with pg.write_engine.connect() as first, pg.write_engine.connect() as second:
        with first.begin():
            mine = claim(first, "d", limit=1, now=NOW, lease=60)
        with second.begin():
            theirs = claim(second, "d", limit=10, now=NOW, lease=60)
    assert payloads(mine) == [b"p10"]
    assert payloads(theirs) == [b"p20"]


def test_claims_of_other_destinations_do_not_wait_for_each_other(pg: Database) -> None:
    put(pg, "p1", 1, destination="d")
    put(pg, "p1", 1, destination="e")
    with pg.write_engine.connect() as first, pg.write_engine.connect() as second:
        first.begin()
        mine = claim(first, "d", limit=10, now=NOW, lease=60)
        with second.begin():
            theirs = claim(second, "e", limit=10, now=NOW, lease=60)
        first.commit()
    assert payloads(mine) == [b"p10"]
    assert payloads(theirs) == [b"p10"]


def test_an_expired_lease_of_a_dead_process_is_claimed_by_another(pg: Database) -> None:
    put(pg, "p1", 2)
    with pg.write_engine.connect() as dead, dead.begin():
        claim(dead, "d", limit=10, now=NOW, lease=60)  # committed, then never finished
    during = pg.writer.call(lambda c: claim(c, "d", limit=10, now=NOW + timedelta(seconds=59), lease=60))
    after = pg.writer.call(lambda c: claim(c, "d", limit=10, now=NOW + timedelta(seconds=61), lease=60))
    assert during == []
    assert payloads(after) == [b"p10", b"p11"]


@pytest.mark.parametrize("name", ["d", "ris-adt", "ünïcode", "x" * 64])
def test_lock_keys_fit_postgresql_int4(name: str) -> None:
    assert all(-(2**31) <= k < 2**31 for k in _claim_lock(name))
