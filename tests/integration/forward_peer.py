"""Helpers for forwarding tests: ``radbridge run`` with a DICOM destination, DCMTK storescp as the peer."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread

from tests.conftest import EngineProcess, free_port, wait_for_port
from tests.dicom.conftest import dcmtk_env
from tests.integration.conftest import sqlite_rows, write_engine_yaml


def forwarding_yaml(dicom_port: int, peer_port: int, called: str = "STORESCP", extra: str = "") -> str:
    """engine.yaml body: the DICOM listener on ``dicom_port``, destination ``pacs`` at ``peer_port``."""
    return f"""\
dicom:
  port: {dicom_port}
  ae_title: RADBRIDGE
outbox:
  poll_interval_seconds: 0.2
destinations:
  - name: pacs
    type: dicom
    host: 127.0.0.1
    port: {peer_port}
    called_ae_title: {called}
    retry: {{initial_seconds: 0.2, max_seconds: 1.0}}
{extra}"""


def start_forwarding_engine(engine: EngineProcess, peer_port: int, called: str = "STORESCP",
                            extra: str = "") -> int:
    """Configure and start ``radbridge run``; its DICOM port."""
    port = free_port()
    write_engine_yaml(engine, forwarding_yaml(port, peer_port, called, extra))
    engine.start(wait_port=port)
    return port


def deliveries(engine: EngineProcess) -> list[tuple[Any, ...]]:
    """(id, status, attempts, last_error, response, ordering_key) of every outbox row, in id order."""
    return sqlite_rows(engine.data_dir / "radbridge.db",
                       "SELECT id, status, attempts, last_error, response, ordering_key FROM outbox ORDER BY id")


def wait_until(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def all_sent(engine: EngineProcess, count: int) -> Callable[[], bool]:
    return lambda: sum(1 for r in deliveries(engine) if r[1] == "SENT") == count


@dataclass
class Storescp:
    """DCMTK storescp writing each received instance into ``out``; its log counts associations."""

    port: int
    out: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None

    def associations(self) -> int:
        # "Association Received" also counts bare TCP connections (the readiness probe)
        return self.log_file.read_text(errors="replace").count("Association Acknowledged")

    def received(self) -> dict[str, Any]:
        """SOP Instance UID -> dataset of every file received."""
        out = {}
        for path in self.out.iterdir():
            ds = dcmread(path)
            out[str(ds.SOPInstanceUID)] = ds
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def storescp(tmp: Path, *options: str, port: int | None = None, name: str = "storescp") -> Iterator[Storescp]:
    """``storescp -v`` (no fork: one process sees every association) on a free port."""
    peer = Storescp(port or free_port(), tmp / f"{name}-out", tmp / f"{name}.log")
    peer.out.mkdir(exist_ok=True)
    with open(peer.log_file, "ab") as log:
        peer.proc = subprocess.Popen(["storescp", "-v", "-aet", "STORESCP", *options, "-od", str(peer.out),
                                      str(peer.port)], env=dcmtk_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(peer.port, proc=peer.proc)
        yield peer
    finally:
        peer.stop()
