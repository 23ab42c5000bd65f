"""Shared fixtures: the external corpus, free ports, PostgreSQL, and a running engine.

A test that needs something outside the project (../shared/corpus, DCMTK,
PostgreSQL, Orthanc) calls :func:`need`; it skips with the reason, unless
``RADBRIDGE_REQUIRE_PEERS=1`` (set by .ci/run), where it fails instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from engine.store.database import Database

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"

# Property tests check outcomes, not speed: Hypothesis' default 200 ms deadline per example
# (and its too-slow health check) turn a scheduler stall on a loaded CI machine into a failure.
settings.register_profile("radbridge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("radbridge")


def need(condition: bool, reason: str) -> None:
    """Skip (or, under RADBRIDGE_REQUIRE_PEERS=1, fail) when ``condition`` is false."""
    if condition:
        return
    if os.environ.get("RADBRIDGE_REQUIRE_PEERS") == "1":
        pytest.fail(f"required peer missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """../shared/corpus (not part of the project)."""
    need(CORPUS.is_dir(), f"test corpus not found at {CORPUS}")
    return CORPUS


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


# --------------------------------------------------------------------------- PostgreSQL


#: Seconds pg_ctl waits for the server to start or stop (its own default is 60).
PG_CTL_TIMEOUT = 180


@dataclass
class PostgresServer:
    """A throw-away cluster run as the ``postgres`` user on a free port."""

    bindir: Path
    datadir: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *cmd: str) -> subprocess.CompletedProcess[bytes]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=PG_CTL_TIMEOUT + 60)

    def start(self) -> None:
        # A throw-away cluster needs no fsync: with it, the shutdown checkpoint after a session's
        # CREATE DATABASEs took 20-45 s on a loaded machine, close to pg_ctl's 60 s wait.
        # Nothing here survives an OS crash anyway; stopping and killing the engine is unaffected.
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w",
                          "-t", str(PG_CTL_TIMEOUT), "-l", str(self.datadir / "server.log"),
                          "-o", f"-p {self.port} -k /tmp -h 127.0.0.1 -c fsync=off -c full_page_writes=off",
                          "start")

    def stop(self) -> None:
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w",
                          "-t", str(PG_CTL_TIMEOUT), "-m", "fast", "stop")

    def query(self, database: str, sql: str) -> list[str]:
        """The first column of ``sql``'s rows, read with psql (a session of its own, named psql)."""
        out = self._as_postgres(str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                                "-U", "postgres", "-d", database, "-At", "-c", sql)
        return out.stdout.decode().splitlines()

    def create_database(self, name: str) -> str:
        self._as_postgres(str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", "postgres", "-c", f"CREATE DATABASE {name}")
        return self.url(name)


def _pg_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Initialise a cluster in a temporary directory, start it, and remove it afterwards."""
    bindir = _pg_bindir()
    need(bindir is not None, "PostgreSQL server binaries (initdb) not installed")
    assert bindir is not None
    need(os.geteuid() != 0 or shutil.which("runuser") is not None,
         "runuser needed to run PostgreSQL as root")
    datadir = Path(tempfile.mkdtemp(prefix="radbridge-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(datadir, "postgres", "postgres")
        server = PostgresServer(bindir, datadir, free_port())
        server._as_postgres(str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres",
                            "--auth=trust", "-E", "UTF8")
        for attempt in range(3):
            try:
                server.start()
                break
            except subprocess.CalledProcessError:
                # The port, free when picked, may have been taken since: try another one.
                if attempt == 2 or (datadir / "postmaster.pid").exists():
                    raise
                server.port = free_port()
        yield server
    finally:
        try:
            if (datadir / "postmaster.pid").exists():
                server.stop()
        finally:
            shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for one test, which may stop and start it."""
    with running_postgres() as server:
        yield server


_counter = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'radbridge.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"rb_{os.getpid()}_{next(_counter)}")


def migrated(url: str) -> Iterator[Database]:
    """A migrated :class:`~engine.store.database.Database` at ``url``, closed afterwards (fixture body)."""
    database = Database(url)
    database.migrate()
    yield database
    database.close()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated :class:`~engine.store.database.Database` on each backend."""
    yield from migrated(db_url)


# --------------------------------------------------------------------------- engine process


@dataclass
class EngineProcess:
    """``radbridge run`` in a subprocess with its own config directory."""

    config_dir: Path
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_port: int | None = None) -> None:
        with open(self.data_dir / "engine.log", "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine.cli.main", "--config", str(self.config_dir), "run"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        if wait_port is not None:
            wait_for_port(wait_port, proc=self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli.main", "--config", str(self.config_dir), *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120,
        )

    def log(self) -> str:
        return (self.data_dir / "engine.log").read_text(errors="replace")


@pytest.fixture
def engine_process(tmp_path: Path) -> Iterator[EngineProcess]:
    """An engine configured by the test: write YAML into ``config_dir`` then ``start()``."""
    config_dir = tmp_path / "config"
    (config_dir / "channels").mkdir(parents=True)
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    (config_dir / "engine.yaml").write_text(f"data_dir: {data_dir}\ndicom: {{enabled: false}}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RADBRIDGE_DATA_DIR": str(data_dir)}
    engine = EngineProcess(config_dir, data_dir, env)
    try:
        yield engine
    finally:
        engine.stop()
