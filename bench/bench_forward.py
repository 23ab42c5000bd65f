"""Forwarding benchmark: stored 512 KB CT instances, radbridge → Orthanc against storescu → Orthanc.

    .venv/bin/python -m bench.bench_forward [--count 300]

Runs in a private network namespace (``unshare --net``, loopback only), as
bench_store does, because Orthanc binds every interface. The same ``--count``
generated CT instances (bench_store.write_instances, explicit VR little endian,
512 KB of pixel data each) go to a fresh Orthanc twice:

- directly: DCMTK ``storescu`` (TCP_NODELAY=1), one association;
- forwarded: ``radbridge run`` (shipped defaults: SQLite ``synchronous=FULL``) first
  stores every instance while the PACS is still down, so that all of them are
  queued; then Orthanc starts on the destination's port and radbridge's outbox
  forwards the queue (one association, kept open).

Both rates are measured the same way, on Orthanc's side: its instance count is
polled every 20 ms, and the rate is (count - 1) / (time of the last arrival -
time of the first). The two alternate for ``--rounds`` rounds (the machine's
other load changes from one minute to the next); each round's ratio
forwarded/direct is printed, then the median. Not a pass/fail gate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.bench_store import write_instances
from tests.conftest import free_port, wait_for_port
from tests.dicom.conftest import dcmtk_env

ROOT = Path(__file__).resolve().parent.parent
_IN_NAMESPACE = "RADBRIDGE_BENCH_IN_NAMESPACE"
POLL_SECONDS = 0.02


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def orthanc(root: Path, dicom_port: int) -> Iterator[int]:
    """A fresh Orthanc on ``dicom_port``; yields its HTTP port."""
    http = free_port()
    root.mkdir(parents=True)
    config = {"Name": "PACS", "StorageDirectory": str(root), "IndexDirectory": str(root), "HttpPort": http,
              "DicomPort": dicom_port, "DicomAet": "PACS", "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": True}
    (root / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(["Orthanc", str(root / "orthanc.json")], env=dcmtk_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(dicom_port, proc=proc, timeout=60)
        wait_for_port(http, proc=proc, timeout=60)
        yield http
    finally:
        _stop(proc)


def _count(http: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics", timeout=10) as answer:
        return int(json.loads(answer.read())["CountInstances"])


def arrival_rate(http: int, count: int, timeout: float = 600.0) -> float:
    """images/s from the first instance's arrival in Orthanc to the last one's (polled)."""
    deadline = time.monotonic() + timeout
    first = None
    while True:
        seen = _count(http)
        now = time.monotonic()
        if first is None and seen > 0:
            first = (now, seen)
        if seen >= count:
            break
        if now > deadline:
            raise RuntimeError(f"only {seen} of {count} instances arrived")
        time.sleep(POLL_SECONDS)
    assert first is not None
    return (count - first[1]) / max(now - first[0], POLL_SECONDS)


def storescu(port: int, paths: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", "PACS", "127.0.0.1", str(port), *map(str, paths)],
                            env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def direct(tmp: Path, paths: list[Path]) -> float:
    port = free_port()
    with orthanc(tmp / "orthanc-direct", port) as http:
        sender = storescu(port, paths)
        rate = arrival_rate(http, len(paths))
        if sender.wait() != 0:
            raise RuntimeError(f"storescu failed: {sender.communicate()[1][-500:]!r}")
    return rate


@contextmanager
def radbridge(tmp: Path, pacs_port: int) -> Iterator[tuple[int, Path]]:
    """``radbridge run`` whose destination ``pacs`` is ``pacs_port``; yields (DICOM port, database file)."""
    port, config, data = free_port(), tmp / "rb-config", tmp / "rb-data"
    (config / "channels").mkdir(parents=True)
    (config / "engine.yaml").write_text(
        f"data_dir: {data}\ndicom:\n  port: {port}\n  ae_title: RADBRIDGE\nlogging:\n  level: WARNING\n"
        "destinations:\n  - name: pacs\n    type: dicom\n    host: 127.0.0.1\n"
        f"    port: {pacs_port}\n    called_ae_title: PACS\n"
        "    retry: {initial_seconds: 0.5, multiplier: 1, max_seconds: 0.5, max_attempts: 1000}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "--config", str(config), "run"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, proc=proc)
        yield port, data / "radbridge.db"
    finally:
        _stop(proc)


def _queued(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox WHERE status = 'QUEUED'").fetchone()[0])


def forwarded(tmp: Path, paths: list[Path]) -> float:
    pacs_port = free_port()
    with radbridge(tmp, pacs_port) as (port, db):
        with subprocess.Popen(["storescu", "-aet", "CT1", "-aec", "RADBRIDGE", "127.0.0.1", str(port),
                               *map(str, paths)], env=dcmtk_env()) as sender:  # fmt: skip
            if sender.wait() != 0:
                raise RuntimeError("storescu -> radbridge failed")
        if _queued(db) != len(paths):
            raise RuntimeError(f"{_queued(db)} of {len(paths)} queued")
        with orthanc(tmp / "orthanc-forward", pacs_port) as http:
            return arrival_rate(http, len(paths))


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp_name:
        tmp = Path(tmp_name)
        paths = write_instances(args.count, tmp / "images")
        size = paths[0].stat().st_size // 1024
        print(f"{args.count} CT instances of {size} KB each, one association, TCP_NODELAY=1:", flush=True)
        ratios = []
        for n in range(args.rounds):
            ours = forwarded(tmp / f"forward-{n}", paths)
            theirs = direct(tmp / f"direct-{n}", paths)
            ratios.append(ours / theirs)
            print(f"  round {n + 1}: storescu -> Orthanc {theirs:6.1f} images/s, radbridge -> Orthanc (forward)"
                  f" {ours:6.1f} images/s, forwarded/direct {ours / theirs:.2f}x", flush=True)
        print(f"  median forwarded/direct: {statistics.median(ratios):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.environ.get(_IN_NAMESPACE) != "1" and shutil.which("unshare"):
        env = {**os.environ, _IN_NAMESPACE: "1"}
        inner = f"ip link set lo up && exec {sys.executable} -m bench.bench_forward {' '.join(sys.argv[1:])}"
        sys.exit(subprocess.call(["unshare", "--net", "sh", "-c", inner], cwd=ROOT, env=env))
    run(args)


if __name__ == "__main__":
    main()
