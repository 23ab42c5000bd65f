"""A database that cannot commit: C-STORE answers 0xA700, never success; once it is back, 0x0000.

PostgreSQL, a cluster of the test's own, stopped and started again (as in
tests/integration/test_store_unavailable.py for MLLP).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import PostgresServer
from tests.dicom.store_peer import running_scp, store_one

pytestmark = pytest.mark.timeout(180)


def test_failed_commit_answers_out_of_resources_then_success_when_back(
    tmp_path: Path, corpus: Path, own_postgres: PostgresServer
) -> None:
    ds = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    with running_scp(tmp_path, db_url=own_postgres.create_database("storage")) as scp:
        own_postgres.stop()
        try:
            assert store_one(scp.port, ds) == 0xA700
        finally:
            own_postgres.start()
        assert scp.instances() == []
        assert store_one(scp.port, ds) == 0x0000
        (row,) = scp.instances()
        assert dcmread(scp.archive / row.path).SOPInstanceUID == ds.SOPInstanceUID
