"""Held-out DICOM files (pydicom's installed test data and files generated here) through the C-STORE SCP.

Regression tests of the dicomcorpus campaign: each sends a file the other tests never
used, exactly as encoded (pynetdicom, STORE_SEND_CHUNKED_DATASET), with and without a
matching order, and checks the answer and the stored file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.dicom.store_peer import dataset_bytes, raw_sender, running_scp, send_raw

pytestmark = pytest.mark.timeout(120)


def _ct() -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def test_a_data_set_of_odd_length_is_refused_and_kept_and_the_next_store_succeeds(tmp_path: Path) -> None:
    """An odd-length value makes the data set odd: no conformant PDV split exists to forward it
    (PS3.8 E.1: every fragment even; DCMTK storescp aborts the association on the last fragment),
    so it was stored with success and then retried against the PACS until dead-lettered."""
    odd = _ct()
    odd.private_block(0x0029, "ACME 1.1", create=True).add_new(0x10, "UN", b"\x01\x02\x03")
    path = tmp_path / "odd.dcm"
    odd.save_as(path, enforce_file_format=True)
    assert len(dataset_bytes(path)) % 2 == 1  # what pydicom wrote: the 3-byte value unpadded
    good = _ct()
    good_path = tmp_path / "good.dcm"
    good.save_as(good_path, enforce_file_format=True)
    syntax = str(odd.file_meta.TransferSyntaxUID)
    with running_scp(tmp_path / "rb") as scp, raw_sender(scp.port, [(str(odd.SOPClassUID), syntax)]) as assoc:
        assert send_raw(assoc, path) == 0xC210
        assert [(q.status, q.sop_instance_uid) for q in scp.quarantined()] == [(0xC210, odd.SOPInstanceUID)]
        assert "odd data set length" in scp.quarantined()[0].reason
        assert scp.instances() == []
        assert send_raw(assoc, good_path) == 0x0000
        assert [r.sop_instance_uid for r in scp.instances()] == [good.SOPInstanceUID]
