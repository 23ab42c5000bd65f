"""A database that cannot commit: C-STORE answers 0xA700, never success; once it is back, 0x0000.

PostgreSQL, a cluster of the test's own, stopped and started again (as in
tests/integration/test_store_unavailable.py for MLLP).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.conftest import PostgresServer
from tests.dicom.store_peer import running_scp

pytestmark = pytest.mark.timeout(180)


def _store(port: int, ds: Dataset) -> int:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_failed_commit_answers_out_of_resources_then_success_when_back(
    tmp_path: Path, corpus: Path, own_postgres: PostgresServer
) -> None:
    ds = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    with running_scp(tmp_path, db_url=own_postgres.create_database("storage")) as scp:
        own_postgres.stop()
        try:
            assert _store(scp.port, ds) == 0xA700
        finally:
            own_postgres.start()
        assert scp.instances() == []
        assert _store(scp.port, ds) == 0x0000
        (row,) = scp.instances()
        assert dcmread(scp.archive / row.path).SOPInstanceUID == ds.SOPInstanceUID
