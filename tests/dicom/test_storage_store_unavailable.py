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


@pytest.mark.parametrize("path", ["streamed receive", "pynetdicom's own receive"])
def test_a_store_waiting_on_a_slow_database_is_not_cut_as_idle(
        tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """A commit that takes longer than dicom.idle_timeout_seconds + 2 s (PostgreSQL answering slowly, within
    database.answer_timeout_seconds): the listener's watchdog counted the store's wait as the peer's idleness
    and cut the connection; the image was stored but the sender got no response (and sent it again). The idle
    timer is stopped while radbridge's own store runs now."""
    import logging
    import time

    from channels.dicom.storage import StorageService

    if path == "pynetdicom's own receive":  # the engine's stream is not installed while pynetdicom logs at INFO
        monkeypatch.setattr(logging.getLogger("pynetdicom"), "level", logging.INFO)
    commit = StorageService._commit

    def slow_commit(self: StorageService, work: object) -> object:
        time.sleep(3.5)  # the idle timeout (1 s) + the watchdog's grace (2 s), and more
        return commit(self, work)  # type: ignore[arg-type]

    monkeypatch.setattr(StorageService, "_commit", slow_commit)
    ds = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    with running_scp(tmp_path, dicom={"port": 0, "ae_title": "RADBRIDGE", "idle_timeout_seconds": 1}) as scp:
        assert store_one(scp.port, ds) == 0x0000
        (row,) = scp.instances()
        assert row.sop_instance_uid == ds.SOPInstanceUID
