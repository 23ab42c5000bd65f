"""When the store cannot commit, the sender gets AE, never AA; when it is back, AA again.

ARCHITECTURE "durable before acknowledged".

SQLite: the tests run as root, where file modes do not stop writes, and the
engine keeps its database files open anyway, so chmod proves nothing;
``chattr +i`` on the mmapped ``-shm`` file kills the process with SIGBUS
(a crash, not an unavailable store). Instead the test lowers the running
engine's RLIMIT_FSIZE to 0 with prlimit(2): every write(2) to a regular file
then fails with EFBIG (CPython ignores SIGXFSZ), which SQLite reports as a
disk I/O error, exactly as when the disk is full or the volume went away.
Raising the limit again is the disk coming back.

PostgreSQL: a cluster of the test's own is stopped and started again.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator

import pytest

from tests.conftest import EngineProcess, PostgresServer, free_port
from tests.integration.conftest import (
    Ack,
    adt,
    cli_json,
    inbound_channel,
    send_all,
    write_channel,
    write_engine_yaml,
)
from tests.integration.mllp_peer import MLLPPeer

pytestmark = pytest.mark.timeout(90)


def _send(port: int, *payloads: bytes) -> list[Ack]:
    return send_all(port, payloads, timeout=20)


def _stored(engine: EngineProcess, control_id: str) -> list[str]:
    return [r["status"] for r in cli_json(engine, "messages", "list", "--control-id", control_id)]


# ---------------------------------------------------------------------------- SQLite


class FileWrites:
    """Switch regular-file writes of a running process off and on (RLIMIT_FSIZE)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def fail(self) -> None:
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

    def restore(self) -> None:
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, unlimited)


@pytest.fixture
def sqlite_engine(
        inbound: EngineProcess, mllp_port: int) -> Iterator[tuple[EngineProcess, FileWrites]]:
    """A running engine on SQLite that has stored one message."""
    assert [a.code for a in _send(mllp_port, adt("WARMUP"))] == ["AA"]
    assert inbound.proc is not None
    writes = FileWrites(inbound.proc.pid)
    try:
        yield inbound, writes
    finally:
        writes.restore()


def test_sqlite_that_cannot_write_answers_ae(sqlite_engine: tuple[EngineProcess, FileWrites],
                                             mllp_port: int) -> None:
    _, writes = sqlite_engine
    writes.fail()

    (ack,) = _send(mllp_port, adt("NOSPACE1"))

    assert ack.code == "AE"
    assert ack.field("ERR", 3).split("^")[0] == "207"


def test_sqlite_keeps_answering_ae_while_it_cannot_write(
        sqlite_engine: tuple[EngineProcess, FileWrites], mllp_port: int) -> None:
    _, writes = sqlite_engine
    writes.fail()

    acks = _send(mllp_port, *(adt(f"NOSPACE{n}") for n in range(10)))

    assert [a.code for a in acks] == ["AE"] * 10


def test_sqlite_accepts_again_once_it_can_write_and_the_refused_message_is_stored_once_on_resend(
        sqlite_engine: tuple[EngineProcess, FileWrites], mllp_port: int) -> None:
    engine, writes = sqlite_engine
    writes.fail()
    (refused,) = _send(mllp_port, adt("NOSPACE2"))
    writes.restore()

    assert _stored(engine, "NOSPACE2") == []
    (accepted,) = _send(mllp_port, adt("NOSPACE2"))

    assert (refused.code, accepted.code) == ("AE", "AA")
    assert _stored(engine, "NOSPACE2") == ["PROCESSED"]


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_engine(engine_process: EngineProcess, own_postgres: PostgresServer,
              mllp_port: int) -> tuple[EngineProcess, PostgresServer]:
    """A running engine on its own PostgreSQL cluster that has stored one message."""
    url = own_postgres.create_database("radbridge")
    write_engine_yaml(engine_process, f"database:\n  url: {url}\n")
    write_channel(engine_process, "inbound", inbound_channel(mllp_port))
    engine_process.start(wait_port=mllp_port)
    assert [a.code for a in _send(mllp_port, adt("WARMUP"))] == ["AA"]
    return engine_process, own_postgres


@pytest.mark.peer
def test_postgresql_stopped_answers_ae(pg_engine: tuple[EngineProcess, PostgresServer],
                                       mllp_port: int) -> None:
    _, server = pg_engine
    server.stop()

    (ack,) = _send(mllp_port, adt("PGDOWN1"))

    assert ack.code == "AE"
    assert ack.field("ERR", 3).split("^")[0] == "207"


@pytest.mark.peer
def test_postgresql_restarted_accepts_again_and_the_refused_message_is_stored_once_on_resend(
        pg_engine: tuple[EngineProcess, PostgresServer], mllp_port: int) -> None:
    engine, server = pg_engine
    server.stop()
    (refused,) = _send(mllp_port, adt("PGDOWN2"))
    server.start()

    assert _stored(engine, "PGDOWN2") == []
    accepted, after = _send(mllp_port, adt("PGDOWN2"), adt("PGUP"))

    assert (refused.code, accepted.code, after.code) == ("AE", "AA", "AA")
    assert _stored(engine, "PGDOWN2") == ["PROCESSED"]


@pytest.mark.peer
def test_forwarding_resumes_after_postgresql_comes_back(
        engine_process: EngineProcess, own_postgres: PostgresServer, mllp_port: int) -> None:
    peer = MLLPPeer(free_port())
    try:
        peer.up()
        url = own_postgres.create_database("radbridge")
        write_engine_yaml(engine_process, f"database:\n  url: {url}\n"
                                          "outbox:\n  poll_interval_seconds: 0.2\n")
        write_channel(engine_process, "inbound", inbound_channel(mllp_port, f"""\
            destinations:
              - name: downstream
                type: mllp
                host: 127.0.0.1
                port: {peer.port}
                retry: {{initial_seconds: 0.2, max_seconds: 1}}
            """))
        engine_process.start(wait_port=mllp_port)
        assert [a.code for a in _send(mllp_port, adt("FWD1"))] == ["AA"]
        peer.wait_for(1)
        own_postgres.stop()
        time.sleep(1.0)  # the worker's rounds fail while the store is gone
        own_postgres.start()

        assert [a.code for a in _send(mllp_port, adt("FWD2"))] == ["AA"]

        assert [r.control_id for r in peer.wait_for(2)] == ["FWD1", "FWD2"]
    finally:
        peer.close()
