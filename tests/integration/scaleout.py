"""The scale-out deployment for tests and bench/bench_scaleout.py.

Several ``radbridge run`` processes (each with its own data directory and
ports) on one PostgreSQL database, with a real HAProxy in TCP mode in front of
their MLLP and DICOM listeners, as docs/deployment.md describes. Everything
listens on 127.0.0.1 on free ports; every process started here is stopped by
its pid.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT, EngineProcess, free_port, wait_for_port

#: Health checks every CHECK_INTERVAL_MS; a server is down after FALL failures. A refused
#: connect is in any case retried on the other server at once (``option redispatch``).
CHECK_INTERVAL_MS = 300
FALL = 2


@dataclass
class HAProxy:
    """HAProxy in the foreground (``-db``), ``mode tcp``, one frontend per service."""

    workdir: Path
    #: frontend name -> backend ports (one per engine process)
    backends: dict[str, list[int]]
    balance: str = "roundrobin"
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    #: The stats socket lives in a short directory of its own: a UNIX socket path has at most
    #: 107 bytes, which a deep pytest tmp_path may exceed.
    socket_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rb-haproxy-")))

    @property
    def stats_socket(self) -> Path:
        return self.socket_dir / "stats.sock"

    @staticmethod
    def binary() -> str | None:
        """The haproxy executable (Debian puts it in /usr/sbin, which a non-root PATH may lack)."""
        found = shutil.which("haproxy") or "/usr/sbin/haproxy"
        return found if Path(found).exists() else None

    @classmethod
    def available(cls) -> bool:
        return cls.binary() is not None

    def config_text(self) -> str:
        """The configuration: the example of docs/deployment.md with test ports and short timers."""
        parts = [textwrap.dedent(f"""\
            global
                maxconn 4096
                stats socket {self.stats_socket} mode 600 level operator
            defaults
                mode tcp
                balance {self.balance}
                timeout connect 1s
                timeout client 60s
                timeout server 60s
                timeout check 1s
                retries 2
                option redispatch 1
                default-server check inter {CHECK_INTERVAL_MS} fall {FALL} rise 2
            """)]
        for name, backend_ports in self.backends.items():
            servers = "".join(f"    server rb{i} 127.0.0.1:{port}\n" for i, port in enumerate(backend_ports, 1))
            parts.append(f"frontend {name}\n    bind 127.0.0.1:{self.ports[name]}\n    default_backend {name}\n"
                         f"backend {name}\n{servers}")
        return "".join(parts)

    def start(self) -> None:
        """Validate the configuration, start, and wait for every frontend."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in self.backends:
            self.ports.setdefault(name, free_port())
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(self.config_text())
        binary = self.binary()
        assert binary is not None, "haproxy not installed"
        subprocess.run([binary, "-c", "-q", "-f", str(cfg)], check=True, capture_output=True, timeout=30)
        with open(self.workdir / "haproxy.log", "ab") as log:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        for port in self.ports.values():
            wait_for_port(port, timeout=30, proc=self.proc)
        deadline = time.monotonic() + 30
        while not self.stats_socket.exists():  # the stats socket may come a moment later
            if time.monotonic() > deadline:
                raise TimeoutError("haproxy stats socket missing")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """``show stat`` from the stats socket: (proxy, server) -> its CSV fields."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().strip().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {(r["pxname"], r["svname"]): r for r in rows}

    def wait_until(self, proxy: str, server: str, status: str, timeout: float = 15.0) -> None:
        """Wait until HAProxy's health checks put ``server`` in ``status`` (UP, DOWN)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # the socket is busy or not there yet: ask again
                if self.stats()[(proxy, server)]["status"].startswith(status):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{proxy}/{server} not {status} after {timeout}s")


@dataclass
class Node:
    """One engine process of the cluster and its own ports."""

    engine: EngineProcess
    mllp_port: int
    dicom_port: int
    http_port: int

    @property
    def pid(self) -> int:
        assert self.engine.proc is not None
        return self.engine.proc.pid


def node_config(data_dir: Path, database_url: str, mllp: int, dicom: int, http: int,
                destination_port: int | None, lease_seconds: float, log_level: str = "INFO") -> tuple[str, str]:
    """engine.yaml and the channel file: the same for every node but for data dir and ports.

    With ``destination_port`` the channel forwards every order to one MLLP
    destination (``reporting``), in order per patient, with a short timeout so
    that a lease may be short too.
    """
    engine_yaml = textwrap.dedent(f"""\
        data_dir: {data_dir}
        database: {{url: "{database_url}", pool_size: 3}}
        mappings_dir: {ROOT / 'mappings'}
        dicom: {{port: {dicom}, ae_title: RADBRIDGE}}
        http: {{port: {http}}}
        outbox: {{poll_interval_seconds: 0.2, lease_seconds: {lease_seconds}}}
        logging: {{level: {log_level}}}
        """)
    channel_yaml = textwrap.dedent(f"""\
        name: ris-inbound
        source: {{type: mllp, port: {mllp}}}
        accept: {{message_types: ["ADT^*", "ORM^O01", "OMI^O23", "OMG^O19"]}}
        duplicates: {{window_hours: 72}}
        mapping: [adt-to-patient, order-to-worklist]
        handlers: [patients, orders]
        """)
    if destination_port is None:
        return engine_yaml, channel_yaml
    channel_yaml += textwrap.dedent(f"""\
        destinations:
          - name: reporting
            type: mllp
            host: 127.0.0.1
            port: {destination_port}
            message_types: ["ORM^O01"]
            ordering_key: patient_id
            timeout_seconds: 1
            retry: {{initial_seconds: 0.2, max_seconds: 1}}
        """)
    return engine_yaml, channel_yaml


def make_node(base: Path, env: dict[str, str], database_url: str, destination_port: int | None,
              lease_seconds: float, log_level: str = "INFO") -> Node:
    """Write one node's configuration under ``base`` (not started)."""
    config_dir, data_dir = base / "config", base / "var"
    (config_dir / "channels").mkdir(parents=True)
    data_dir.mkdir(parents=True)
    node = Node(EngineProcess(config_dir, data_dir, {**env, "RADBRIDGE_DATA_DIR": str(data_dir)}),
                free_port(), free_port(), free_port())
    engine_yaml, channel_yaml = node_config(data_dir, database_url, node.mllp_port, node.dicom_port,
                                            node.http_port, destination_port, lease_seconds, log_level)
    (config_dir / "engine.yaml").write_text(engine_yaml)
    (config_dir / "channels" / "ris-inbound.yaml").write_text(channel_yaml)
    return node


def start_nodes(nodes: list[Node]) -> None:
    """Start every node at once (they migrate the shared database together) and wait for their ports."""
    for node in nodes:
        node.engine.start()
    for node in nodes:
        try:
            wait_for_port(node.mllp_port, proc=node.engine.proc)
            wait_for_port(node.dicom_port, proc=node.engine.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log ends:\n{node.engine.log()[-4000:]}") from exc


@contextlib.contextmanager
def cluster(base: Path, env: dict[str, str], database_url: str, destination_port: int | None, count: int = 2,
            lease_seconds: float = 12.0, log_level: str = "INFO") -> Iterator[tuple[list[Node], HAProxy]]:
    """``count`` running nodes on ``database_url`` and HAProxy (frontends ``mllp`` and ``dicom``)."""
    nodes = [make_node(base / f"node{i}", env, database_url, destination_port, lease_seconds, log_level)
             for i in range(1, count + 1)]
    balancer = HAProxy(base / "haproxy", {"mllp": [n.mllp_port for n in nodes],
                                          "dicom": [n.dicom_port for n in nodes]})
    try:
        start_nodes(nodes)
        balancer.start()
        for i in range(1, count + 1):
            balancer.wait_until("mllp", f"rb{i}", "UP")
            balancer.wait_until("dicom", f"rb{i}", "UP")
        yield nodes, balancer
    finally:
        balancer.stop()
        for node in nodes:
            node.engine.stop()
