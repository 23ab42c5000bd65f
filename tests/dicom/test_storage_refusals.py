"""C-STORE of datasets that cannot be stored: failure status, quarantine, and the next store still works."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import update

from channels.dicom.storage import StorageService
from engine.cli.queries import engine_status
from engine.cli.status_view import attention
from engine.domain.instance_tables import quarantined_instances
from tests.dicom.store_peer import StoreSCP, dataset_bytes, raw_file, raw_sender, running_scp, send_raw

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"

#: corpus file -> (SOP class and transfer syntax it is sent under, the status radbridge must answer)
BROKEN = {
    "MR_truncated.dcm": (MR, EXPLICIT, 0xC210),  # pixel data cut short
    "rtplan_truncated.dcm": (RT_PLAN, IMPLICIT, 0xC210),  # cut mid-element
    "bad_sequence.dcm": (CT, JPEG_LOSSLESS, 0xC220),  # its UIDs are 64 hex digits, not UIDs
    "UN_sequence.dcm": (CT, JPEG_LOSSLESS, 0xC220),  # no SOP Instance UID at all
    "meta_missing_tsyntax.dcm": (CT, IMPLICIT, 0xC220),
    "no_meta_group_length.dcm": (CT, IMPLICIT, 0xC220),
    "empty_charset_LEI.dcm": (CT, IMPLICIT, 0xC220),
}


def _dataset_of(path: Path) -> bytes:
    """The dataset bytes of a corpus file, whatever its (possibly broken or absent) File Meta Information."""
    data = path.read_bytes()
    pos = 132 if data[128:132] == b"DICM" else 0
    while data[pos:pos + 2] == b"\x02\x00":  # File Meta elements: group 0002, explicit VR little endian
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"UN", b"SQ", b"UT", b"OW"):
            pos += 12 + int.from_bytes(data[pos + 8:pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6:pos + 8], "little")
    return data[pos:]


def _good(corpus: Path) -> Path:
    return corpus / "dicom" / "single" / "CT_small.dcm"


def _ok_after(scp: StoreSCP, assoc: object, corpus: Path) -> None:
    before = len(scp.instances())
    assert send_raw(assoc, _good(corpus)) == 0x0000
    assert len(scp.instances()) in (before, before + 1)  # the same CT each time: stored once


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_corpus_dataset_is_refused_kept_and_the_next_store_succeeds(
    tmp_path: Path, corpus: Path, name: str
) -> None:
    sop_class, syntax, status = BROKEN[name]
    body = _dataset_of(corpus / "dicom" / "edge" / name)
    uid = str(dcmread(corpus / "dicom" / "edge" / name, force=True).get("SOPInstanceUID", "") or "1.2.3.4")
    sent = raw_file(body, sop_class, uid, syntax, tmp_path / "sent.dcm")
    with running_scp(tmp_path / "rb") as scp:
        contexts = [(sop_class, syntax), (CT, EXPLICIT)]
        with raw_sender(scp.port, contexts) as assoc:
            assert send_raw(assoc, sent) == status
            _ok_after(scp, assoc, corpus)
        with raw_sender(scp.port, [(CT, EXPLICIT)]) as assoc:
            _ok_after(scp, assoc, corpus)
        (kept,) = scp.quarantined()
        assert (kept.status, kept.received_from_ae, kept.sop_instance_uid) == (status, "CT1", uid[:64])
        assert dataset_bytes(scp.config.quarantine_dir() / kept.path) == body  # exactly what arrived
        assert [r.sop_instance_uid for r in scp.instances()] == [str(dcmread(_good(corpus)).SOPInstanceUID)]


def test_garbage_bytes_get_cannot_understand(tmp_path: Path, corpus: Path) -> None:
    sent = raw_file(b"\x08\x00\x18\x00UI\xff\xff" + b"x" * 300, CT, "1.2.3.4", EXPLICIT, tmp_path / "g.dcm")
    with running_scp(tmp_path / "rb") as scp, raw_sender(scp.port, [(CT, EXPLICIT)]) as assoc:
        assert send_raw(assoc, sent) == 0xC210
        _ok_after(scp, assoc, corpus)


def test_dataset_of_another_sop_class_than_its_context_gets_a900(tmp_path: Path, corpus: Path) -> None:
    src = _good(corpus)  # a CT, sent as MR Image Storage
    sent = raw_file(dataset_bytes(src), MR, str(dcmread(src).SOPInstanceUID), EXPLICIT, tmp_path / "mr.dcm")
    with running_scp(tmp_path / "rb") as scp:
        with raw_sender(scp.port, [(MR, EXPLICIT), (CT, EXPLICIT)]) as assoc:
            assert send_raw(assoc, sent) == 0xA900
            _ok_after(scp, assoc, corpus)
        assert [q.status for q in scp.quarantined()] == [0xA900]


def test_radbridge_status_counts_the_refused_images_and_says_where_they_are(tmp_path: Path, corpus: Path) -> None:
    """A refused image was in no line of ``radbridge status``: "needs attention: nothing" after any refusal."""
    sent = raw_file(dataset_bytes(_good(corpus)), CT, "1.2.3.4.5", EXPLICIT, tmp_path / "x.dcm")
    with running_scp(tmp_path / "rb") as scp:
        assert scp.db.read(engine_status)["images"] == _counts(0, 0)
        with raw_sender(scp.port, [(CT, EXPLICIT)]) as assoc:
            assert send_raw(assoc, sent) == 0xC221
        data = scp.db.read(engine_status)
    assert data["images"] == _counts(1, 1)
    assert _image_attention(data) == [
        "images: 1 C-STORE(s) refused in the last 24 hours and kept in quarantine (archive.quarantine;"
        " sender, UIDs, status and reason in the table quarantined_instances)"]


def test_needs_attention_clears_a_day_after_the_last_refusal_and_the_total_stays(
        tmp_path: Path, corpus: Path) -> None:
    """Counting every refusal ever, "needs attention" never cleared once one image had been refused."""
    sent = raw_file(dataset_bytes(_good(corpus)), CT, "1.2.3.4.5", EXPLICIT, tmp_path / "x.dcm")
    with running_scp(tmp_path / "rb") as scp:
        with raw_sender(scp.port, [(CT, EXPLICIT)]) as assoc:
            assert send_raw(assoc, sent) == 0xC221
            assert send_raw(assoc, sent) == 0xC221
        q = quarantined_instances
        first = min(row.id for row in scp.quarantined())
        scp.db.writer.call(lambda c: c.execute(update(q).where(q.c.id == first)
                                               .values(received_at=datetime.now(UTC) - timedelta(hours=25))))
        data = scp.db.read(engine_status)
        assert data["images"] == _counts(2, 1)
        assert [line.split(" C-STORE")[0] for line in _image_attention(data)] == ["images: 1"]
        scp.db.writer.call(lambda c: c.execute(update(q).values(received_at=datetime.now(UTC) - timedelta(days=2))))
        data = scp.db.read(engine_status)
    assert data["images"] == _counts(2, 0)
    assert _image_attention(data) == []


@pytest.mark.parametrize("pynetdicom_path", [False, True], ids=["streamed", "pynetdicom-at-info"])
def test_a_processing_failure_is_answered_c211_kept_in_quarantine_and_shown_by_status(
        tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
        pynetdicom_path: bool) -> None:
    """An unexpected exception in the storage service was answered 0xC211 and only logged; the image was gone."""
    reconcile, failures = StorageService._reconcile, [RuntimeError("injected")]

    def fails_once(self: StorageService, *args: Any) -> Any:
        if failures:
            raise failures.pop()
        return reconcile(self, *args)

    monkeypatch.setattr(StorageService, "_reconcile", fails_once)
    logger = logging.getLogger("pynetdicom")
    if pynetdicom_path:  # the streamed receive is not installed (channels.dicom.store_stream)
        level = logger.level
        logger.setLevel(logging.INFO)
        request.addfinalizer(lambda: logger.setLevel(level))
    with running_scp(tmp_path / "rb") as scp:
        with raw_sender(scp.port, [(CT, EXPLICIT)]) as assoc:
            assert send_raw(assoc, _good(corpus)) == 0xC211
            _ok_after(scp, assoc, corpus)
        (kept,) = scp.quarantined()
        assert (kept.status, kept.received_from_ae) == (0xC211, "CT1")
        assert kept.reason.startswith("processing failure") and kept.reason.endswith(": RuntimeError")
        assert dataset_bytes(scp.config.quarantine_dir() / kept.path) == dataset_bytes(_good(corpus))
        data = scp.db.read(engine_status)
    assert data["images"] == _counts(1, 1, failed=1)
    assert _image_attention(data) == [
        "images: 1 C-STORE(s) failed in the storage service (0xC211) in the last 24 hours and kept in quarantine;"
        " the log has the error (archive.quarantine; sender, UIDs, status and reason in the table"
        " quarantined_instances)"]


def _counts(total: int, recent: int, failed: int = 0) -> dict[str, int]:
    return {"quarantined": total, "quarantined_last_24h": recent, "failed_last_24h": failed}


def _image_attention(data: dict[str, Any]) -> list[str]:
    return [line for line in attention({"channels": {}, "jobs": {}, **data}) if line.startswith("images:")]


def test_dataset_whose_instance_uid_differs_from_the_command_is_refused(tmp_path: Path, corpus: Path) -> None:
    sent = raw_file(dataset_bytes(_good(corpus)), CT, "1.2.3.4.5", EXPLICIT, tmp_path / "x.dcm")
    with running_scp(tmp_path / "rb") as scp, raw_sender(scp.port, [(CT, EXPLICIT)]) as assoc:
        assert send_raw(assoc, sent) == 0xC221
        assert scp.instances() == []
        _ok_after(scp, assoc, corpus)


@pytest.mark.parametrize("name", ["badVR.dcm", "SR_wrong_VR_0040A170_dcm4che.dcm"])
def test_well_formed_dataset_with_odd_values_is_stored_as_received(tmp_path: Path, corpus: Path, name: str) -> None:
    """A bad value ("1A" for an IS) or a dictionary SQ sent with another VR is not a reason to refuse an image."""
    src = corpus / "dicom" / "edge" / name
    ds = dcmread(src, stop_before_pixels=True)
    syntax = ds.file_meta.TransferSyntaxUID
    sent = raw_file(dataset_bytes(src), ds.SOPClassUID, ds.SOPInstanceUID, syntax, tmp_path / "s.dcm")
    with running_scp(tmp_path / "rb") as scp:
        with raw_sender(scp.port, [(ds.SOPClassUID, syntax)]) as assoc:
            assert send_raw(assoc, sent) == 0x0000
        (row,) = scp.instances()
        assert dataset_bytes(scp.archive / row.path) == dataset_bytes(src)
