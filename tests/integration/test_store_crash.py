"""kill -9 of the engine while a modality streams C-STOREs: every success is on disk, intact, indexed once.

The engine (``radbridge run``) is SIGKILLed once KILL_AFTER_STORED instances got
0x0000, while pynetdicom keeps sending on the same association. After a restart
on the same data directory: no temporary file is left in the archive's
``.incoming``; each instance that got success has exactly one index row whose
file holds the dataset as sent (SHA-256 of the dataset bytes, PixelData
identical); resending what got no success then completes the study.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.conftest import EngineProcess, free_port
from tests.dicom.store_peer import dataset_bytes
from tests.integration.conftest import sqlite_rows, write_engine_yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

COUNT = 150
KILL_AFTER_STORED = 25
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _instances(corpus: Path) -> list[Dataset]:
    base = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    study, series = generate_uid(), generate_uid()
    out = []
    for n in range(COUNT):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, n + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def _send(port: int, datasets: list[Dataset], on_success: threading.Event | None = None) -> list[str]:
    """Send one after another on one association until it breaks; the SOP Instance UIDs that got 0x0000."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(CT, EXPLICIT)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    stored: list[str] = []
    try:
        for ds in datasets:
            if not assoc.is_established:
                break
            rsp = assoc.send_c_store(ds)
            if "Status" in rsp and int(rsp.Status) == 0x0000:
                stored.append(str(ds.SOPInstanceUID))
                if on_success is not None and len(stored) >= KILL_AFTER_STORED:
                    on_success.set()
    finally:
        if assoc.is_established:
            assoc.release()
    return stored


def _start(engine: EngineProcess, port: int) -> None:
    write_engine_yaml(engine, f"dicom:\n  port: {port}\n  ae_title: RADBRIDGE\n")
    engine.start(wait_port=port)


def test_every_store_acknowledged_before_a_kill_is_on_disk_intact_and_indexed_once(
    engine_process: EngineProcess, corpus: Path
) -> None:
    port = free_port()
    datasets = _instances(corpus)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    _start(engine_process, port)
    reached = threading.Event()
    killer = threading.Thread(target=lambda: (reached.wait(120), engine_process.kill()), daemon=True)
    killer.start()
    stored_before = _send(port, datasets, reached)
    reached.set()
    killer.join(30)
    assert KILL_AFTER_STORED <= len(stored_before) < COUNT, "the kill must land mid-stream"

    archive = engine_process.data_dir / "archive"
    left = list((archive / ".incoming").iterdir())
    (archive / ".incoming" / "rx-cut-short.dcm").write_bytes(b"\0" * 132)  # as a kill mid-receive leaves it
    _start(engine_process, port)
    assert list((archive / ".incoming").iterdir()) == []  # cleaned at start
    db = engine_process.data_dir / "radbridge.db"
    rows = {r[0]: r for r in sqlite_rows(db, "SELECT sop_instance_uid, path, sha256 FROM instances")}
    for uid in stored_before:
        _, path, sha256 = rows[uid]
        stored = archive / path
        assert hashlib.sha256(dataset_bytes(stored)).hexdigest() == sha256
        assert dcmread(stored).PixelData == by_uid[uid].PixelData
    counts = sqlite_rows(db, "SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid) FROM instances")
    assert counts[0][0] == counts[0][1]

    rest = [ds for ds in datasets if str(ds.SOPInstanceUID) not in set(stored_before)]
    assert _send(port, rest) == [str(ds.SOPInstanceUID) for ds in rest]
    assert sqlite_rows(db, "SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid) FROM instances") == [(COUNT, COUNT)]
    assert sqlite_rows(db, "SELECT COUNT(*), MAX(number_of_instances) FROM studies") == [(1, COUNT)]
    print(f"stored before the kill: {len(stored_before)}, resent: {len(rest)}, temporary files left: {len(left)}")
