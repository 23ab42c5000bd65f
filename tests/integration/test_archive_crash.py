"""kill -9 while the engine copies instances to the secondary: nothing lost, nothing duplicated.

The secondary (a tmpfs) is read-only while the instances are stored, so every copy is
owed; it is made writable, and the engine is killed with SIGKILL once the first copies
have landed. After a restart every instance is in both locations exactly once, intact.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydicom.uid import generate_uid

from tests.archive.replica_peer import ct, send
from tests.conftest import EngineProcess, free_port, need
from tests.integration.conftest import sqlite_rows, write_engine_yaml

COUNT = 30


@pytest.fixture
def secondary_mount(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "second"
    mount.mkdir()
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)], capture_output=True)
    need(done.returncode == 0, f"cannot mount a tmpfs: {done.stderr!r}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def _copies(mount: Path) -> list[Path]:
    return [p for p in mount.rglob("*.dcm") if ".incoming" not in p.parts]


def test_kill_during_replication_loses_and_duplicates_nothing(
        engine_process: EngineProcess, corpus: Path, secondary_mount: Path) -> None:
    port = free_port()
    write_engine_yaml(engine_process, yaml.safe_dump({
        "dicom": {"port": port, "ae_title": "RADBRIDGE"}, "outbox": {"poll_interval_seconds": 0.2},
        "archive": {"secondary": str(secondary_mount), "verify_sample": 0,
                    "replication_retry": {"initial_seconds": 0.2, "max_seconds": 0.2}}}))
    engine_process.start(wait_port=port)
    subprocess.run(["mount", "-o", "remount,ro", str(secondary_mount)], check=True)
    study = generate_uid()
    datasets = [ct(corpus, study) for _ in range(COUNT)]
    for ds in datasets:
        ds.PixelData = os.urandom(2 << 20)  # 2 MB each: copies take long enough to be interrupted
        ds.Rows, ds.Columns = 1024, 1024
    assert send(port, datasets) == [0] * COUNT
    subprocess.run(["mount", "-o", "remount,rw", str(secondary_mount)], check=True)
    deadline = time.monotonic() + 60
    while len(_copies(secondary_mount)) < 3:
        assert time.monotonic() < deadline, "no copy started"
        time.sleep(0.005)
    engine_process.kill()
    landed = len(_copies(secondary_mount))
    assert landed < COUNT, "every copy finished before the kill: the test proved nothing"
    status = engine_process.cli("status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["channels"]["archive"]["queued"] > 0

    engine_process.start(wait_port=port)
    db = engine_process.data_dir / "radbridge.db"
    deadline = time.monotonic() + 120
    # The copy is marked VERIFIED in its own commit and its outbox row SENT in the next one: stopping
    # between the two leaves the row QUEUED (copied again, idempotently, at the next start). Wait for both.
    while (sqlite_rows(db, "SELECT COUNT(*) FROM instance_copies WHERE secondary_state = 'VERIFIED'") != [(COUNT,)]
           or sqlite_rows(db, "SELECT COUNT(*) FROM outbox WHERE destination = 'archive:secondary'"
                              " AND status = 'SENT'") != [(COUNT,)]):
        assert time.monotonic() < deadline, "copies did not catch up after the restart"
        time.sleep(0.2)
    engine_process.stop()
    paths = dict(sqlite_rows(db, "SELECT sop_instance_uid, path FROM instances"))
    assert len(paths) == COUNT
    primary = engine_process.data_dir / "archive"
    assert sorted(p.relative_to(secondary_mount).as_posix() for p in _copies(secondary_mount)) == sorted(
        paths.values())
    assert all((secondary_mount / p).read_bytes() == (primary / p).read_bytes() for p in paths.values())
    assert list((secondary_mount / ".incoming").iterdir()) == []  # the interrupted copy's temporary file is gone
    rows = sqlite_rows(db, "SELECT status, COUNT(*) FROM outbox WHERE destination = 'archive:secondary'"
                           " GROUP BY status")
    assert rows == [("SENT", COUNT)]
    assert engine_process.cli("archive", "verify").returncode == 0
