"""C-STORE from DCMTK storescu: the corpus study, compressed transfer syntaxes, ECHO, AE allow-list."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from engine.domain.tables import series, studies
from tests.conftest import need
from tests.dicom.conftest import dcmtk_env, needs_dcmtk
from tests.dicom.store_peer import dataset_bytes, pixel_data, raw_sender, running_scp, send_raw, storescu

pytestmark = needs_dcmtk


def test_corpus_study_is_stored_durably_and_indexed(tmp_path: Path, corpus: Path) -> None:
    study = sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))
    with running_scp(tmp_path) as scp:
        done = storescu(scp.port, study)
        assert done.returncode == 0, done.stderr[-2000:]
        rows = scp.instances()
        assert len(rows) == len(study) == 16
        for src in study:
            uid = str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)
            stored = scp.stored_path(uid)
            assert pixel_data(stored) == pixel_data(src)
            assert stored.stat().st_mode & 0o077 == 0
            meta = dcmread(stored).file_meta
            assert (meta.MediaStorageSOPInstanceUID, meta.SourceApplicationEntityTitle) == (uid, "CT1")
        assert {r.received_from_ae for r in rows} == {"CT1"}
        assert all(len(r.sha256) == 64 and r.size > 0 for r in rows)
        (study_row,) = scp.db.read(lambda c: c.execute(select(studies)).all())
        as_received = (study_row.patient_id, study_row.patient_name, study_row.accession_number)
        assert as_received == ("583295", "DOE^J1", "MOF5026")
        assert study_row.order_pk is None  # unscheduled: no order has this UID or accession
        assert (study_row.number_of_instances, study_row.modalities_in_study) == (16, "MR")
        series_rows = scp.db.read(lambda c: c.execute(select(series)).all())
        assert sum(s.number_of_instances for s in series_rows) == 16
        assert not list((scp.archive / ".incoming").iterdir())


def test_echo_still_answers(tmp_path: Path) -> None:
    with running_scp(tmp_path) as scp:
        done = subprocess.run(["echoscu", "-aet", "CT1", "-aec", "RADBRIDGE", "127.0.0.1", str(scp.port)],
                              env=dcmtk_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


def test_calling_ae_not_on_the_allow_list_cannot_store(tmp_path: Path, corpus: Path) -> None:
    src = corpus / "dicom" / "single" / "CT_small.dcm"
    dicom = {"port": 0, "ae_title": "RADBRIDGE", "accepted_calling_ae_titles": ["CT1"]}
    with running_scp(tmp_path, dicom=dicom) as scp:
        assert storescu(scp.port, [src], aet="INTRUDER").returncode != 0
        assert scp.instances() == []
        assert storescu(scp.port, [src], aet="CT1").returncode == 0
        assert len(scp.instances()) == 1


#: storescu's option that proposes a file's own (compressed) transfer syntax, so it is sent unconverted.
PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE
    "1.2.840.10008.1.2.2": "-xb",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated
}


def _testdata(name: str) -> Path:
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file(name, download=False)))


COMPRESSED = [
    "SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_rle.dcm",
    "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
    "corpus:single/CT_jpegls_dcm4che.dcm",
]


@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_transfer_syntaxes_arrive_unchanged(tmp_path: Path, corpus: Path, name: str) -> None:
    src = corpus / "dicom" / name[7:] if name.startswith("corpus:") else _testdata(name)
    syntax = str(dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    with running_scp(tmp_path) as scp:
        done = storescu(scp.port, [src], PROPOSE[syntax])
        assert done.returncode == 0, done.stderr[-2000:]
        (row,) = scp.instances()
        assert row.transfer_syntax_uid == syntax
        assert pixel_data(scp.archive / row.path) == pixel_data(src)  # storescu re-encodes the rest


@pytest.mark.parametrize("name", sorted(set(COMPRESSED) - {"corpus:single/CT_jpegls_dcm4che.dcm"}))
def test_raw_dataset_bytes_are_stored_byte_for_byte(tmp_path: Path, name: str) -> None:
    src = _testdata(name)
    meta = dcmread(src, stop_before_pixels=True).file_meta
    with running_scp(tmp_path) as scp:
        with raw_sender(scp.port, [(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)]) as assoc:
            assert send_raw(assoc, src) == 0x0000
        (row,) = scp.instances()
        assert dataset_bytes(scp.archive / row.path) == dataset_bytes(src)


def _dciodvfy_errors(path: Path) -> set[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return {line.strip() for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.parametrize(
    "name",
    ["study_dcm4che_MR_DOE_J1/MR01.dcm", "single/CT_small.dcm", "single/US_multiframe_ybr_30f.dcm",
     "single/SR_comprehensive_test-SR.dcm", "single/MR_enhanced_multiframe_10f.dcm", "single/CR_RG3_J2KI.dcm"],
)
def test_dciodvfy_finds_no_new_error_in_the_stored_file(tmp_path: Path, corpus: Path, name: str) -> None:
    need(shutil.which("dciodvfy") is not None, "dicom3tools (dciodvfy) not installed")
    src = corpus / "dicom" / name
    syntax = str(dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    with running_scp(tmp_path) as scp:
        done = storescu(scp.port, [src], *([PROPOSE[syntax]] if syntax in PROPOSE else []))
        assert done.returncode == 0, done.stderr[-2000:]
        (row,) = scp.instances()
        assert _dciodvfy_errors(scp.archive / row.path) <= _dciodvfy_errors(src)
