"""Forwarding reads through the archive: ``radbridge run`` with two locations → DCMTK storescp.

The primary copy is tiered away, deleted or damaged before the peer comes up; the peer must
receive the dataset bytes exactly as archived (read from the secondary), and an instance with
no intact copy anywhere must end as a dead letter saying so, while the others are delivered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread
from pydicom.uid import generate_uid

from engine.archive.part10 import dataset_offset
from tests.archive.replica_peer import ct, send
from tests.conftest import EngineProcess, free_port, need
from tests.dicom.conftest import DCMTK
from tests.integration.conftest import sqlite_rows, write_engine_yaml
from tests.integration.forward_peer import storescp, wait_until

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture(autouse=True)
def _dcmtk() -> None:
    need(DCMTK, "DCMTK (storescp) not installed")


def _dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(data[:1 << 16]):]


def _states(engine: EngineProcess) -> dict[str, tuple[str, str, str]]:
    rows = sqlite_rows(engine.data_dir / "radbridge.db",
                       "SELECT i.sop_instance_uid, i.path, c.primary_state, c.secondary_state FROM instances i"
                       " JOIN instance_copies c ON c.instance_pk = i.id")
    return {uid: (path, p, s) for uid, path, p, s in rows}


def _start(engine: EngineProcess, peer_port: int, **archive: object) -> tuple[int, Path, Path]:
    """The engine with a secondary location and destination ``pacs`` (not up yet); its DICOM port."""
    port = free_port()
    primary, secondary = engine.data_dir / "archive", engine.data_dir.parent / "second"
    retry = {"initial_seconds": 0.2, "max_seconds": 0.5, "max_attempts": 1000}
    config = {
        "dicom": {"port": port, "ae_title": "RADBRIDGE"},
        "outbox": {"poll_interval_seconds": 0.2},
        "archive": {"secondary": str(secondary), "verify_sample": 0,
                    "replication_retry": {"initial_seconds": 0.2, "max_seconds": 0.2}, **archive},
        "destinations": [{"name": "pacs", "type": "dicom", "host": "127.0.0.1", "port": peer_port,
                          "called_ae_title": "STORESCP", "retry": retry}],
    }
    write_engine_yaml(engine, yaml.safe_dump(config))
    engine.start(wait_port=port)
    return port, primary, secondary


def _forwards(engine: EngineProcess) -> list[tuple[object, ...]]:
    """(id, status, attempts, last_error) of the rows of destination ``pacs``."""
    return sqlite_rows(engine.data_dir / "radbridge.db",
                       "SELECT id, status, attempts, last_error FROM outbox WHERE destination = 'pacs' ORDER BY id")


def _wait(check: Callable[[], bool], what: str) -> None:
    wait_until(check, timeout=90, what=what)


def test_tiered_instances_are_forwarded_from_the_secondary_byte_identical(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    peer_port = free_port()
    port, primary, secondary = _start(engine_process, peer_port, tier_after_days=0.00001,
                                      tier_interval_seconds=0.5)
    study = generate_uid()
    assert send(port, [ct(corpus, study) for _ in range(3)]) == [0] * 3
    _wait(lambda: {v[1] for v in _states(engine_process).values()} == {"TIERED"}, "primary copies tiered")
    states = _states(engine_process)
    assert not any((primary / path).exists() for path, _, _ in states.values())
    with storescp(tmp_path, "+B", port=peer_port) as peer:  # +B: written exactly as received
        _wait(lambda: sum(r[1] == "SENT" for r in _forwards(engine_process)) == 3, "every instance SENT")
        received = {_uid_of(f): f for f in peer.out.iterdir()}
    for uid, (path, _, _) in states.items():
        assert _dataset_bytes(received[uid]) == _dataset_bytes(secondary / path)


def _uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_a_lost_or_damaged_primary_is_read_from_the_secondary_and_no_copy_at_all_is_a_dead_letter(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    peer_port = free_port()
    port, primary, secondary = _start(engine_process, peer_port)
    study, other = generate_uid(), generate_uid()
    datasets = [ct(corpus, study) for _ in range(3)] + [ct(corpus, other)]
    assert send(port, datasets) == [0] * 4
    _wait(lambda: {v[2] for v in _states(engine_process).values()} == {"VERIFIED"}, "secondary copies verified")
    damaged, lost, gone, intact = (str(ds.SOPInstanceUID) for ds in datasets)
    states = _states(engine_process)
    originals = {uid: _dataset_bytes(primary / path) for uid, (path, _, _) in states.items()}
    target = primary / states[damaged][0]
    data = bytearray(target.read_bytes())
    data[-100] ^= 0x01  # a flipped bit in the pixel data: the File Meta still parses
    target.write_bytes(bytes(data))
    (primary / states[lost][0]).unlink()
    (primary / states[gone][0]).unlink()
    (secondary / states[gone][0]).unlink()
    with storescp(tmp_path, "+B", port=peer_port) as peer:  # +B: written exactly as received
        _wait(lambda: sum(r[1] in ("SENT", "ERROR") for r in _forwards(engine_process)) == 4, "every row settled")
        time.sleep(0.5)
        received = {_uid_of(f): f for f in peer.out.iterdir()}
    assert set(received) == {damaged, lost, intact}  # nothing half-sent of the damaged primary either
    for uid in (damaged, lost, intact):
        assert _dataset_bytes(received[uid]) == originals[uid]
    (error,) = [r for r in _forwards(engine_process) if r[1] == "ERROR"]
    assert error[2] == 1  # permanent at once, not a retry loop
    assert "no intact copy" in str(error[3]) and gone in str(error[3])
    listed = engine_process.cli("outbox", "list", "--status", "ERROR")
    assert "no intact copy" in listed.stdout
