"""A deflated data set sent with a zlib header (RFC 1950) where the transfer syntax requires raw deflate
(RFC 1951, PS3.5 A.5): refused with a reason that says so, not "error" (pynetdicom SCU)."""

from __future__ import annotations

import zlib
from pathlib import Path

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import raw_file, raw_sender, running_scp

pytestmark = needs_dcmtk


def _explicit_le(corpus: Path) -> tuple[bytes, str, str]:
    ds = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)  # the data set in explicit VR little endian, as deflate wraps it
    return buf.getvalue(), str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def test_a_zlib_wrapped_deflated_data_set_is_refused_with_its_reason(tmp_path: Path, corpus: Path) -> None:
    data, sop_class, sop_instance = _explicit_le(corpus)
    wrapped = zlib.compress(data, 9)  # RFC 1950: a 2-byte header and an Adler-32 trailer around the deflate
    path = raw_file(wrapped + b"\0" * (len(wrapped) % 2), sop_class, sop_instance, DeflatedExplicitVRLittleEndian,
                    tmp_path / "zlib.dcm")
    good = raw_file(_raw_deflate(data), sop_class, sop_instance, DeflatedExplicitVRLittleEndian, tmp_path / "raw.dcm")
    with running_scp(tmp_path / "scp") as scp, raw_sender(scp.port, [(sop_class, DeflatedExplicitVRLittleEndian)]) \
            as assoc:
        rsp = assoc.send_c_store(path)
        assert rsp.Status == 0xC210
        assert "zlib" in rsp.ErrorComment and "RFC 1951" in rsp.ErrorComment
        (kept,) = scp.quarantined()
        assert "zlib header (RFC 1950)" in kept.reason and "raw deflate (RFC 1951" in kept.reason
        assert scp.instances() == []
        assert int(assoc.send_c_store(good).Status) == 0  # the same data set, raw deflate: stored
        assert len(scp.instances()) == 1


def test_a_deflated_data_set_that_cannot_be_inflated_says_why(tmp_path: Path, corpus: Path) -> None:
    data, sop_class, sop_instance = _explicit_le(corpus)
    broken = b"\xff" * 64 + _raw_deflate(data)  # BTYPE 11: an invalid block type at once
    path = raw_file(broken + b"\0" * (len(broken) % 2), sop_class, sop_instance, DeflatedExplicitVRLittleEndian,
                    tmp_path / "broken.dcm")
    with running_scp(tmp_path / "scp") as scp, raw_sender(scp.port, [(sop_class, DeflatedExplicitVRLittleEndian)]) \
            as assoc:
        rsp = assoc.send_c_store(path)
        assert (rsp.Status, rsp.ErrorComment) == (0xC210, "deflated data set cannot be inflated")
        (kept,) = scp.quarantined()
        assert "cannot be inflated: Error -3" in kept.reason and "zlib header" not in kept.reason
