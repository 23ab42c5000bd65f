"""PostgreSQL cut off by the network under a running engine: no RST, no FIN, nothing answers.

A stopped server closes its connections and the engine notices at once
(``test_postgresql_outage.py``). A host that froze, a failed-over VM or a partition close nothing:
before, a connection already open waited on its statement for as long as the kernel kept
retransmitting (about 15 minutes), and so did every message and image behind it. libpq's TCP
keepalives and ``tcp_user_timeout`` (``engine.store.database.TCP_DEFAULTS``) now end such a
connection within about 30 s: the sender gets its AE or 0xA700, and everything succeeds again
once the network is back, without restarting the engine.

The partition is real: the server runs in a network namespace of its own, reached over a veth
pair, and the engine's end of the pair goes down. Outside a namespace, the only test here re-runs
this module under ``unshare --net`` (as the Orthanc tests do) and reports its result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    PG_CTL_TIMEOUT,
    ROOT,
    EngineProcess,
    PostgresServer,
    _pg_bindir,
    free_port,
    need,
    wait_for_port,
)
from tests.integration.conftest import adt, inbound_channel, send_all, write_channel
from tests.integration.test_receive_workers import _associate, _instances, _start

_IN_NAMESPACE = "RADBRIDGE_TEST_IN_NETNS"
_ENGINE_SIDE, _SERVER_SIDE = "10.201.0.1", "10.201.0.2"

pytestmark = [pytest.mark.peer, pytest.mark.slow]


if os.environ.get(_IN_NAMESPACE) != "1":

    @pytest.mark.timeout(600)
    def test_a_partition_from_postgresql_in_a_private_network_namespace(tmp_path: Path) -> None:
        need(os.geteuid() == 0, "a network namespace and a veth pair need root")
        need(all(shutil.which(t) for t in ("unshare", "nsenter", "ip", "runuser")),
             "unshare, nsenter, ip or runuser not available")
        need(_pg_bindir() is not None, "PostgreSQL server binaries (initdb) not installed")
        inner = (f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider"
                 f" --basetemp={tmp_path / 'inner'} {Path(__file__)}")
        done = subprocess.run(["unshare", "--net", "sh", "-c", inner], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, _IN_NAMESPACE: "1"}, timeout=580)
        assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
        assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class _RemotePostgres(PostgresServer):
    """The cluster in the network namespace of process ``holder``, listening on the veth address."""

    holder: int = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@{_SERVER_SIDE}:{self.port}/{database}"

    def _as_postgres(self, *cmd: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["nsenter", "-t", str(self.holder), "-n", "runuser", "-u", "postgres", "--", *cmd],
                              check=True, capture_output=True, timeout=PG_CTL_TIMEOUT + 60)

    def start(self) -> None:
        socket_dir = self.datadir / "run"
        socket_dir.mkdir(exist_ok=True)
        shutil.chown(socket_dir, "postgres", "postgres")
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", str(PG_CTL_TIMEOUT),
                          "-l", str(self.datadir / "server.log"),
                          "-o", f"-p {self.port} -k {socket_dir} -h {_SERVER_SIDE} -c fsync=off", "start")

    def create_database(self, name: str) -> str:
        self._as_postgres(str(self.bindir / "psql"), "-h", _SERVER_SIDE, "-p", str(self.port), "-U", "postgres",
                          "-c", f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture
def remote_postgres() -> Iterator[_RemotePostgres]:
    """PostgreSQL in a network namespace of its own, joined to this one by the veth pair va/vb."""
    bindir = _pg_bindir()
    assert bindir is not None
    holder = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
    datadir = Path(tempfile.mkdtemp(prefix="radbridge-pg-"))
    server = _RemotePostgres(bindir, datadir, 5432, holder.pid)
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not make its namespace"
            time.sleep(0.01)
        _ip("link", "add", "va", "type", "veth", "peer", "name", "vb")
        _ip("link", "set", "vb", "netns", str(holder.pid))
        _ip("addr", "add", f"{_ENGINE_SIDE}/24", "dev", "va")
        _ip("link", "set", "va", "up")
        inside = ["nsenter", "-t", str(holder.pid), "-n", "ip"]
        for args in (["link", "set", "lo", "up"], ["addr", "add", f"{_SERVER_SIDE}/24", "dev", "vb"],
                     ["link", "set", "vb", "up"]):
            subprocess.run([*inside, *args], check=True, capture_output=True, timeout=30)
        shutil.chown(datadir, "postgres", "postgres")
        server._as_postgres(str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        (datadir / "pg_hba.conf").write_text("host all all 10.201.0.0/24 trust\nlocal all all trust\n")
        server.start()
        yield server
    finally:
        try:
            if (datadir / "postmaster.pid").exists():
                server.stop()
        finally:
            holder.kill()
            holder.wait(timeout=10)
            shutil.rmtree(datadir, ignore_errors=True)


def _timed(what: dict[str, Any], key: str, run: Any) -> threading.Thread:
    def go() -> None:
        started = time.monotonic()
        try:
            what[key] = run()
        except Exception as exc:  # an answer of its own kind: recorded, asserted below
            what[key] = exc
        what[f"{key} seconds"] = time.monotonic() - started

    thread = threading.Thread(target=go, name=f"partition-{key}")
    thread.start()
    return thread


if os.environ.get(_IN_NAMESPACE) == "1":  # collected only inside the namespace

    @pytest.mark.timeout(300)
    def test_open_connections_to_a_cut_off_database_end_within_a_minute_and_the_engine_recovers(
            engine_process: EngineProcess, remote_postgres: _RemotePostgres, corpus: Path) -> None:
        mllp = free_port()
        url = remote_postgres.create_database("radbridge")
        write_channel(engine_process, "inbound", inbound_channel(mllp))
        port = _start(engine_process, f'database: {{url: "{url}"}}\n', processes=1)
        wait_for_port(mllp)
        images = _instances(corpus, 3)
        assoc = _associate(port)
        assoc.dimse_timeout = 120
        try:
            assert [a.code for a in send_all(mllp, [adt("BEFORE")])] == ["AA"]
            assert int(assoc.send_c_store(images[0]).Status) == 0

            _ip("link", "set", "va", "down")  # the server's host is gone: nothing answers, nothing closes
            answers: dict[str, Any] = {}
            try:
                threads = [_timed(answers, "order", lambda: send_all(mllp, [adt("CUT")], timeout=150)[0]),
                           _timed(answers, "image", lambda: int(assoc.send_c_store(images[1]).Status))]
                for thread in threads:
                    thread.join(timeout=200)
            finally:
                _ip("link", "set", "va", "up")

            assert answers["order"].code in ("AE", "AR"), answers["order"]  # never AA: nothing was stored
            assert answers["image"] == 0xA700, answers["image"]
            assert answers["order seconds"] < 90 and answers["image seconds"] < 90, answers  # not ~15 minutes

            deadline = time.monotonic() + 60  # back without a restart: the first one may still meet a dead pool entry
            while (ack := send_all(mllp, [adt(f"BACK{int(time.monotonic())}")], timeout=60)[0]).code != "AA":
                assert time.monotonic() < deadline, ack
            assert int(assoc.send_c_store(images[2]).Status) == 0
        finally:
            if assoc.is_established:
                assoc.release()
        log = engine_process.log()
        assert log.count("Traceback") <= 2, log[-4000:]
