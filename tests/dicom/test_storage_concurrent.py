"""Concurrent associations: every store waiting on a shared (group) commit that fails is answered 0xA700.

The index refuses new instance rows (a SQLite trigger raising in the INSERT) while four
associations store at once, so their index transactions fail whether they ran inline,
alone on the writer thread or batched into one commit; every C-STORE must be answered
0xA700, never success, nothing indexed; with the trigger gone the same instances store.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import text

from tests.dicom.store_peer import running_scp

pytestmark = pytest.mark.timeout(180)

SENDERS, EACH = 4, 6


def _instances(corpus: Path) -> list[list[Dataset]]:
    batches = []
    for _ in range(SENDERS):
        batch = []
        for _ in range(EACH):
            ds = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            batch.append(ds)
        batches.append(batch)
    return batches


def _send_all(port: int, batches: list[list[Dataset]]) -> list[int]:
    """Each batch on its own association, all at once; every status."""
    statuses: list[int] = []
    lock, start = threading.Lock(), threading.Barrier(len(batches))

    def send(batch: list[Dataset]) -> None:
        ae = AE(ae_title="CT1")
        ae.add_requested_context(batch[0].SOPClassUID, batch[0].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
        assert assoc.is_established
        start.wait()
        try:
            for ds in batch:
                status = int(assoc.send_c_store(ds).Status)
                with lock:
                    statuses.append(status)
        finally:
            assoc.release()

    threads = [threading.Thread(target=send, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return statuses


def test_every_concurrent_store_gets_out_of_resources_when_the_commit_fails(tmp_path: Path, corpus: Path) -> None:
    batches = _instances(corpus)
    with running_scp(tmp_path) as scp:
        scp.db.writer.call(lambda c: c.execute(text(
            "CREATE TRIGGER refuse BEFORE INSERT ON instances BEGIN SELECT RAISE(ABORT, 'refused'); END")))
        assert _send_all(scp.port, batches) == [0xA700] * (SENDERS * EACH)
        assert scp.instances() == []
        scp.db.writer.call(lambda c: c.execute(text("DROP TRIGGER refuse")))
        assert _send_all(scp.port, batches) == [0x0000] * (SENDERS * EACH)
        assert len(scp.instances()) == SENDERS * EACH
