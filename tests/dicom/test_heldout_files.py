"""Held-out DICOM files (pydicom's installed test data and files generated here) through the C-STORE SCP.

Regression tests of the dicomcorpus campaign: each sends a file the other tests never
used, exactly as encoded (pynetdicom, STORE_SEND_CHUNKED_DATASET), with and without a
matching order, and checks the answer and the stored file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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


# --- coercion of held-out encodings -----------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
#: What reconciliation may change (mappings/order-to-image.yaml's targets) and what it adds.
COERCED = {"PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
           "IssuerOfAccessionNumberSequence", "ReferringPhysicianName", "StudyDescription", "ProcedureCodeSequence",
           "StudyID", "RequestAttributesSequence", "OriginalAttributesSequence", "SpecificCharacterSet"}
EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"

#: name -> (transfer syntax, SpecificCharacterSet, a name in it, the character set after coercing to "MÜLLER^JÖRG")
CHARSETS: dict[str, tuple[str, object, str, object]] = {
    "ISO 2022 IR 87 (Japanese, three components)": (
        EXPLICIT_LE, ["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "ISO_IR 192"),
    "ISO 2022 IR 13 + IR 87 (katakana)": (
        IMPLICIT_LE, ["ISO 2022 IR 13", "ISO 2022 IR 87"], "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう", "ISO_IR 192"),
    "ISO 2022 IR 149 (Korean)": (EXPLICIT_LE, ["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동", "ISO_IR 192"),
    "ISO_IR 100 (Latin-1, keeps it)": (EXPLICIT_BE, "ISO_IR 100", "Buc^Jérôme", "ISO_IR 100"),
    "ISO_IR 126 (Greek)": (EXPLICIT_LE, "ISO_IR 126", "Διονυσιος", "ISO_IR 192"),
    "ISO_IR 144 (Cyrillic)": (IMPLICIT_LE, "ISO_IR 144", "Люксембург", "ISO_IR 192"),
    "GB18030 (all of Unicode: keeps it)": (EXPLICIT_LE, "GB18030", "Wang^XiaoDong=王^小东", "GB18030"),
    "ISO_IR 192 (keeps it)": (EXPLICIT_BE, "ISO_IR 192", "Wang^XiaoDong=王^小東", "ISO_IR 192"),
}


def _with_private_oddities(ds: Dataset) -> None:
    """Private elements of rarely seen VRs, and sequences of undefined length (items too)."""
    block = ds.private_block(0x0029, "ACME 1.1", create=True)
    block.add_new(0x10, "UN", b"\x01\x02\x03\x04")
    block.add_new(0x11, "UT", "x" * 70001 + "y")
    block.add_new(0x12, "OD", b"\0" * 16)
    block.add_new(0x13, "UV", 2**63)
    block.add_new(0x14, "SV", -(2**62))
    block.add_new(0x15, "UR", "http://example.org/x")
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "X", "L", "Äpfel"
    item.is_undefined_length_sequence_item = True
    ds.ProcedureCodeSequence = [item]
    ds.ProcedureCodeSequence.is_undefined_length = True


def _decoded(ds: Dataset) -> dict[int, str]:
    return {int(e.tag): repr(e.value) for e in ds if not (e.tag.element == 0 and e.tag.group > 6)}


@pytest.mark.parametrize("case", sorted(CHARSETS))
def test_held_out_encodings_change_only_the_coerced_attributes(tmp_path: Path, case: str) -> None:
    from pydicom import dcmwrite
    from pydicom.datadict import tag_for_keyword

    from engine.domain.handlers import OrdersHandler, order_policy
    from tests.domain.factories import apply_records, order, patient

    syntax, charset, name, expected_charset = CHARSETS[case]
    src = _ct()
    src.StudyInstanceUID = generate_uid()
    src.file_meta.TransferSyntaxUID = syntax
    src.SpecificCharacterSet = charset
    src.PatientName = name
    src.InstitutionName = src.StudyDescription = name.replace("^", " ")
    _with_private_oddities(src)
    path = tmp_path / "in.dcm"
    dcmwrite(path, src, implicit_vr=syntax == IMPLICIT_LE, little_endian=syntax != EXPLICIT_BE, force_encoding=True)
    sent = dcmread(path)
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("PX1", patient_name="MÜLLER^JÖRG", birth_date="19500505", sex="M"),
            order("PLX", patient_id="PX1", accession_number="ACCX1", study_instance_uid=str(src.StudyInstanceUID)),
        ])
        with raw_sender(scp.port, [(str(src.SOPClassUID), syntax)]) as assoc:
            assert send_raw(assoc, path) == 0x0000
        stored = dcmread(scp.stored_path(str(src.SOPInstanceUID)))
    assert (str(stored.PatientName), stored.SpecificCharacterSet) == ("MÜLLER^JÖRG", expected_charset)
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.PixelData == sent.PixelData
    coerced = {tag_for_keyword(k) for k in COERCED}
    before = {t: v for t, v in _decoded(sent).items() if t not in coerced}
    after = {t: v for t, v in _decoded(stored).items() if t not in coerced}
    assert after == before  # every other value, private ones and other text in the old character set, intact
    (item,) = stored.OriginalAttributesSequence
    assert str(item.ModifiedAttributesSequence[0].PatientName) == name


# --- elements pydicom cannot decode, when the character set changes -----------------------------------------

#: A modality's mistakes that are stored as sent: an FD of 6 bytes and an unknown VR (explicit VR).
UNDECODABLE = [(0x00189306, "FD", b"\0" * 6), (0x00191001, "XY", b"ABCD")]
CZECH = "Dvořák^Antonín"  # not in ISO_IR 100 (ř): the coerced header becomes ISO_IR 192


def _undecodable(tmp_path: Path) -> tuple[Dataset, Path]:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = _ct()  # ISO_IR 100
    ds.StudyInstanceUID = generate_uid()
    ds.add_new(0x00190010, "LO", "ACME 1.0")
    for tag, vr, value in UNDECODABLE:
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    path = tmp_path / "undecodable.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ds, path


def _raw_element(tag: int, vr: str, value: bytes) -> bytes:
    """The element as received (explicit VR little endian)."""
    return (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + vr.encode() + len(
        value).to_bytes(2, "little") + value


def _store_matched(tmp_path: Path, src: Dataset, path: Path) -> Path:
    """Send ``path`` as received to an engine holding an order for it whose patient is named :data:`CZECH`
    (a coercion to ISO_IR 192); the stored file."""
    from engine.domain.handlers import OrdersHandler, order_policy
    from tests.domain.factories import apply_records, order, patient

    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("PX1", patient_name=CZECH),
            order("PLX", patient_id="PX1", accession_number="ACCX1", study_instance_uid=str(src.StudyInstanceUID))])
        with raw_sender(scp.port, [(str(src.SOPClassUID), EXPLICIT_LE)]) as assoc:
            assert send_raw(assoc, path) == 0x0000
        return scp.stored_path(str(src.SOPInstanceUID))


def _stored_once_though_sent_twice(scp: Any, ds: Any, path: Path, syntax: str = "1.2.840.10008.1.2.1") -> Path:
    """Send ``path`` (as it is, in ``syntax``) twice on one association: both 0x0000, one version stored; its
    stored path."""
    with raw_sender(scp.port, [(str(ds.SOPClassUID), syntax)]) as assoc:
        assert send_raw(assoc, path) == 0x0000
        assert send_raw(assoc, path) == 0x0000  # resent: recognised as the same image, nothing changes
    (row,) = scp.instances()
    assert row.versions == 1
    return Path(scp.stored_path(str(ds.SOPInstanceUID)))


def test_an_element_pydicom_cannot_decode_does_not_fail_a_coercion_to_utf8(tmp_path: Path) -> None:
    """It did: the whole header was decoded for the character set change, 0xC211 for every resend."""
    src, path = _undecodable(tmp_path)
    stored = _store_matched(tmp_path, src, path)
    ds = dcmread(stored, stop_before_pixels=True)
    assert (str(ds.PatientName), ds.SpecificCharacterSet) == (CZECH, "ISO_IR 192")
    data = stored.read_bytes()
    assert all(_raw_element(tag, vr, value) in data for tag, vr, value in UNDECODABLE)


def test_an_element_pydicom_cannot_decode_does_not_stop_a_correction_to_utf8(tmp_path: Path) -> None:
    """It did: the reconcile-images job failed on the image at every run, and every request after it waited."""
    from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
    from engine.domain.late_reconcile import late_jobs
    from tests.domain.factories import apply_records, order, patient

    src, path = _undecodable(tmp_path)
    adt = "MSH|^~\\&|HIS|HOSP|RADBRIDGE|HOSP|20261205080000||ADT^A08|A08|P|2.5.1\rPID|1||X^^^HOSP^MR||X\r"
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("PX1", patient_name="DOE^JOHN"),
            order("PLX", patient_id="PX1", accession_number="ACCX1", study_instance_uid=str(src.StudyInstanceUID))])
        with raw_sender(scp.port, [(str(src.SOPClassUID), EXPLICIT_LE)]) as assoc:
            assert send_raw(assoc, path) == 0x0000  # coerced to DOE^JOHN: Latin-1 is enough
        apply_records(scp.db, PatientsHandler(patient_policy(scp.config)),
                      [patient("PX1", patient_name=CZECH, event="A08")], adt)
        (job,) = late_jobs(scp.db, scp.config)
        assert job.run() == 1
        stored = scp.stored_path(str(src.SOPInstanceUID))
    ds = dcmread(stored, stop_before_pixels=True)
    assert (str(ds.PatientName), ds.SpecificCharacterSet) == (CZECH, "ISO_IR 192")
    assert [i.ReasonForTheAttributeModification for i in ds.OriginalAttributesSequence] == ["COERCE", "CORRECT"]
    data = stored.read_bytes()
    assert all(_raw_element(tag, vr, value) in data for tag, vr, value in UNDECODABLE)


# --- text after the pixel data, when the character set changes ------------------------------------------

LATIN1_TEXT = "Jérôme Müller"


def _text_after_pixel_data(tmp_path: Path) -> tuple[Dataset, Path]:
    """CT_small (ISO_IR 100) with a private group after the pixel data, as GE's (7FE1,xxxx) movie group is:
    an LO and a sequence whose item holds an LO, both with Latin-1 text, then trailing padding."""
    ds = _ct()
    ds.StudyInstanceUID = generate_uid()
    block = ds.private_block(0x7FE1, "ACME MOVIE 1.0", create=True)
    block.add_new(0x01, "LO", LATIN1_TEXT)
    item = Dataset()
    item.add_new(0x00091010, "LO", LATIN1_TEXT)
    block.add_new(0x02, "SQ", [item])
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 8)
    path = tmp_path / "after.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ds, path


def _assert_text_after_pixel_data_reencoded(stored: Path, sent: Path) -> None:
    ds, before = dcmread(stored), dcmread(sent)
    assert (str(ds.PatientName), ds.SpecificCharacterSet) == (CZECH, "ISO_IR 192")
    assert ds[0x7FE11001].value == LATIN1_TEXT
    assert ds[0x7FE11002].value[0][0x00091010].value == LATIN1_TEXT
    assert ds.PixelData == before.PixelData
    assert ds.InstitutionName == before.InstitutionName


def test_text_after_the_pixel_data_is_reencoded_when_a_coercion_changes_the_character_set(tmp_path: Path) -> None:
    """It was copied as received with the bulk: Latin-1 bytes in a header declared ISO_IR 192 ('J�r�me')."""
    src, path = _text_after_pixel_data(tmp_path)
    _assert_text_after_pixel_data_reencoded(_store_matched(tmp_path, src, path), path)


def test_text_after_the_pixel_data_is_reencoded_when_a_correction_changes_the_character_set(tmp_path: Path) -> None:
    """The same for a correction after an ADT update (the reconcile-images job)."""
    from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
    from engine.domain.late_reconcile import late_jobs
    from tests.domain.factories import apply_records, order, patient

    src, path = _text_after_pixel_data(tmp_path)
    adt = "MSH|^~\\&|HIS|HOSP|RADBRIDGE|HOSP|20261205080000||ADT^A08|A08|P|2.5.1\rPID|1||X^^^HOSP^MR||X\r"
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("PX1", patient_name="MÜLLER^JÖRG"),
            order("PLX", patient_id="PX1", accession_number="ACCX1", study_instance_uid=str(src.StudyInstanceUID))])
        with raw_sender(scp.port, [(str(src.SOPClassUID), EXPLICIT_LE)]) as assoc:
            assert send_raw(assoc, path) == 0x0000  # Latin-1 is enough: the bytes after the pixel data kept
        apply_records(scp.db, PatientsHandler(patient_policy(scp.config)),
                      [patient("PX1", patient_name=CZECH, event="A08")], adt)
        (job,) = late_jobs(scp.db, scp.config)
        assert job.run() == 1
        _assert_text_after_pixel_data_reencoded(scp.stored_path(str(src.SOPInstanceUID)), path)


def test_over_the_whole_read_limit_the_elements_after_the_pixel_data_are_kept_as_received(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Reading the dataset whole holds its pixel data in memory: a multiframe of hundreds of MB is not
    read so (memory stays flat); its trailing elements are copied as received, and the log says so."""
    import engine.reconcile.rewrite as rewrite

    monkeypatch.setattr(rewrite, "WHOLE_LIMIT", 1024)
    src, path = _text_after_pixel_data(tmp_path)
    with caplog.at_level(logging.WARNING):
        stored = _store_matched(tmp_path, src, path)
    ds, before = dcmread(stored), dcmread(path)
    assert (str(ds.PatientName), ds.SpecificCharacterSet) == (CZECH, "ISO_IR 192")
    assert ds.PixelData == before.PixelData
    sent, kept = path.read_bytes(), stored.read_bytes()
    tail = sent[sent.index(b"\xe1\x7f\x10\x00"):]  # (7FE1,0010) on: the private block after the pixel data
    assert kept.endswith(tail)
    assert "kept as received" in caplog.text


def test_encapsulated_uncompressed_explicit_vr_little_endian_is_accepted_and_stored_as_received(
        tmp_path: Path) -> None:
    """PS3.5 A.4.11 (1.2.840.10008.1.2.1.98) is missing from pynetdicom's list of transfer syntaxes; the
    storage contexts accept any proposed one (UNRESTRICTED_STORAGE_SERVICE), and the file is kept as received."""
    from pydicom.encaps import encapsulate
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from tests.dicom.store_peer import raw_file

    ts = "1.2.840.10008.1.2.1.98"
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    frame = ds.PixelData
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    path = raw_file(buf.getvalue(), str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, tmp_path / "encaps.dcm")
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        with raw_sender(scp.port, [(str(ds.SOPClassUID), ts)]) as assoc:
            assert assoc.accepted_contexts and assoc.accepted_contexts[0].transfer_syntax[0] == ts
            assert send_raw(assoc, path) == 0x0000
        stored = scp.stored_path(str(ds.SOPInstanceUID))
    assert dataset_bytes(stored) == dataset_bytes(path)  # unmatched: exactly as received
    assert dcmread(stored).file_meta.TransferSyntaxUID == ts


# --- the group case: one image, several requested procedures -----------------------------------------------

def test_an_image_of_a_group_case_keeps_every_requested_procedure_when_coerced_to_one(tmp_path: Path) -> None:
    """DCMTK storescu sends an image whose RequestAttributesSequence names three requested procedures (IHE RAD
    TF-2 4.8.4.1.3.2); radbridge knows the second one's order. The mapping's one item was merged into the first
    item and the other two dropped: the archive and the PACS lost two of the procedures the image was acquired
    for, and the item kept carried order A's step description under order B's ids."""
    import subprocess

    from engine.domain.handlers import OrdersHandler, order_policy
    from tests.conftest import need
    from tests.dicom.conftest import DCMTK
    from tests.dicom.store_peer import storescu
    from tests.domain.factories import apply_records, order, patient

    need(DCMTK, "DCMTK not installed")
    src = _ct()
    src.RequestAttributesSequence = []
    for rp, description in (("A", "CT CHEST"), ("B", "CT ABDOMEN"), ("C", "CT PELVIS")):
        item = Dataset()
        item.RequestedProcedureID, item.ScheduledProcedureStepID = f"RP-{rp}", f"SPS-{rp}"
        item.AccessionNumber, item.ScheduledProcedureStepDescription = f"ACC-{rp}", description
        src.RequestAttributesSequence.append(item)
    path = tmp_path / "group.dcm"
    src.save_as(path, enforce_file_format=True)
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("PX1", patient_name="DOE^JOHN"),
            order("PLB", patient_id="PX1", accession_number="ACC-B", requested_procedure_id="RP-B",
                  scheduled_procedure_step_id="SPS-B", requested_procedure_description="CT ABDOMEN W",
                  scheduled_procedure_step_description="")])
        done = storescu(scp.port, [path])
        assert done.returncode == 0, done.stderr[-2000:]
        stored = scp.stored_path(str(src.SOPInstanceUID))
        dump = subprocess.run(["dcmdump", str(stored)], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0 and "\nE:" not in "\n" + dump.stderr
    ds = dcmread(stored)
    assert (ds.AccessionNumber, ds.PatientID) == ("ACC-B", "PX1")
    items = ds.RequestAttributesSequence
    assert [(i.ScheduledProcedureStepID, i.AccessionNumber, i.ScheduledProcedureStepDescription)
            for i in items] == [("SPS-A", "ACC-A", "CT CHEST"), ("SPS-B", "ACC-B", "CT ABDOMEN"),
                                ("SPS-C", "ACC-C", "CT PELVIS")]
    assert items[1].RequestedProcedureDescription == "CT ABDOMEN W" and "RequestedProcedureDescription" not in items[0]
    (history,) = ds.OriginalAttributesSequence
    old = history.ModifiedAttributesSequence[0].RequestAttributesSequence
    assert [i.ScheduledProcedureStepID for i in old] == ["SPS-A", "SPS-B", "SPS-C"]
    assert ds.PixelData == src.PixelData


# --- elements out of tag order ---------------------------------------------------------------------------

def test_an_element_out_of_tag_order_is_coerced_once_and_the_stored_header_is_in_order(tmp_path: Path) -> None:
    """A dataset whose AccessionNumber comes after PatientName (PS3.5 7.1 wants ascending tags), sent as encoded
    (pynetdicom): the coerced AccessionNumber was inserted in tag order and the received one kept too. DCMTK
    warned "found twice" and kept the first; pydicom kept the last, the modality's value, so every later
    coercion or correction changed it again."""
    import subprocess

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from engine.domain.handlers import OrdersHandler, order_policy
    from tests.dicom.store_peer import raw_file
    from tests.domain.factories import apply_records, order, patient

    ds = _ct()
    ds.StudyInstanceUID = generate_uid()
    del ds.AccessionNumber
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    body = buf.getvalue()
    at = body.index(b"\x10\x00\x20\x00LO")  # PatientID: the AccessionNumber goes just before it
    body = body[:at] + _raw_element(0x00080050, "SH", b"ACC99 ") + body[at:]
    path = raw_file(body, str(ds.SOPClassUID), str(ds.SOPInstanceUID), EXPLICIT_LE, tmp_path / "unordered.dcm")
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("PX1", patient_name="DOE^JOHN"),
            order("PLX", patient_id="PX1", accession_number="ACCX1", study_instance_uid=str(ds.StudyInstanceUID))])
        stored = _stored_once_though_sent_twice(scp, ds, path)
    dump = subprocess.run(["dcmdump", str(stored)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "twice" not in dump.stderr, dump.stderr
    got = dcmread(stored)
    assert (got.AccessionNumber, str(got.PatientName)) == ("ACCX1", "DOE^JOHN")
    assert got.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].AccessionNumber == "ACC99"
    assert got.PixelData == ds.PixelData


# --- File Meta Information elements inside the data set --------------------------------------------------------

DEFLATED = "1.2.840.10008.1.2.1.99"


@pytest.mark.parametrize(("matched", "syntax"), [(False, EXPLICIT_LE), (True, EXPLICIT_LE), (False, DEFLATED),
                                                 (True, DEFLATED)],
                         ids=["as received", "coerced", "deflated as received", "deflated coerced"])
def test_file_meta_elements_sent_in_the_data_set_are_not_stored_after_radbridges_own(
        tmp_path: Path, matched: bool, syntax: str) -> None:
    """A sender that copied its file's (0002,xxxx) elements into the data set (pynetdicom sends what it is given):
    they were stored after radbridge's File Meta Information, so the file held two Transfer Syntax UIDs and two
    Source AE Titles. pydicom read the data set's (implicit VR, wrong: the data set is explicit) and the
    sender's claimed AE title; dcmdump warned "Invalid Element found in data set". PS3.10 7.1: a data set holds
    no group 0002. A deflated one matched to an order got 0xC211 (pydicom refuses to write them in a data set)
    at every resend. They are left out now (DCMTK's storescp keeps them, with a warning); the rest is stored
    as received."""
    import subprocess

    from pynetdicom.dsutils import encode

    from engine.domain.handlers import OrdersHandler, order_policy
    from tests.dicom.store_peer import store_one
    from tests.domain.factories import apply_records, order, patient

    ds = _ct()
    ds.StudyInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    clean = encode(ds, False, True, deflated=syntax == DEFLATED)
    ds.add_new(0x00020003, "UI", "1.2.3.4")
    ds.add_new(0x00020010, "UI", IMPLICIT_LE)
    ds.add_new(0x00020016, "AE", "ELSEWHERE")
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        if matched:
            apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
                patient("PX1", patient_name=CZECH),
                order("PLX", patient_id="PX1", accession_number="ACCX1", study_instance_uid=str(ds.StudyInstanceUID))])
        assert store_one(scp.port, ds) == 0x0000
        assert store_one(scp.port, ds) == 0x0000  # resent: recognised as the same image
        (row,) = scp.instances()
        assert row.versions == 1
        stored = scp.stored_path(str(ds.SOPInstanceUID))
    dump = subprocess.run(["dcmdump", str(stored)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "Invalid Element" not in dump.stderr, dump.stderr
    got = dcmread(stored)
    assert (got.file_meta.TransferSyntaxUID, got.file_meta.SourceApplicationEntityTitle) == (syntax, "CT1")
    assert got.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert not [e for e in got if e.tag.group == 2]
    if matched:
        assert str(got.PatientName) == CZECH and got.SpecificCharacterSet == "ISO_IR 192"
    elif syntax == EXPLICIT_LE:
        assert dataset_bytes(stored) == clean  # everything else exactly as received
    else:  # inflated and deflated again: the same values
        assert [(e.tag, e.value) for e in got] == [(e.tag, e.value) for e in ds if e.tag.group != 2]
    assert got.PixelData == ds.PixelData


@pytest.mark.parametrize("syntax", [EXPLICIT_LE, DEFLATED], ids=["explicit", "deflated"])
@pytest.mark.parametrize("where", ["after PatientID", "after the pixel data"])
@pytest.mark.parametrize("matched", [False, True], ids=["as received", "coerced"])
def test_a_file_meta_element_out_of_order_in_the_data_set_is_not_stored(tmp_path: Path, matched: bool,
                                                                      where: str, syntax: str) -> None:
    """A (0002,0010) Transfer Syntax UID placed later in the data set (not first): only a data set that started
    with group 0000/0002 was cleaned, so one further on stayed in an image stored as received (and one after the
    pixel data in a coerced one too). The structure check's walk now finds it wherever it is. A deflated data
    set is not walked: one after its pixel data stayed in an image stored as received (its elements were read
    only up to the pixel data)."""
    import subprocess
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from engine.domain.handlers import OrdersHandler, order_policy
    from tests.dicom.store_peer import raw_file
    from tests.domain.factories import apply_records, order, patient

    ds = _ct()
    ds.StudyInstanceUID = generate_uid()
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    clean = buf.getvalue()
    stray = _raw_element(0x00020010, "UI", IMPLICIT_LE.encode() + b"\0")
    at = clean.index(b"\x10\x00\x20\x00LO") if where == "after PatientID" else len(clean)
    body = clean[:at] + stray + clean[at:]
    if syntax == DEFLATED:
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = packer.compress(body) + packer.flush()
        body += b"\0" * (len(body) % 2)
    path = raw_file(body, str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, tmp_path / "stray.dcm")
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        if matched:
            apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
                patient("PX1", patient_name="DOE^JOHN"),
                order("PLX", patient_id="PX1", accession_number="ACCX1", study_instance_uid=str(ds.StudyInstanceUID))])
        stored = _stored_once_though_sent_twice(scp, ds, path, syntax)
    dump = subprocess.run(["dcmdump", str(stored)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "Invalid Element" not in dump.stderr, dump.stderr
    got = dcmread(stored)
    assert got.file_meta.TransferSyntaxUID == syntax
    assert not [e for e in got if e.tag.group == 2]
    if matched:
        assert str(got.PatientName) == "DOE^JOHN"
    elif syntax == EXPLICIT_LE:
        assert dataset_bytes(stored) == clean  # everything else exactly as received
    else:  # inflated and deflated again: the same values
        assert [(e.tag, e.value) for e in got] == [(e.tag, e.value) for e in ds]
    assert got.PixelData == ds.PixelData


# --- private elements of unknown VR inside sequence items ------------------------------------------------------

def test_a_nested_private_element_of_unknown_vr_is_recorded_when_the_header_becomes_utf8(tmp_path: Path) -> None:
    """DCMTK storescu sends an implicit VR ISO_IR 100 image whose AnatomicRegionSequence item holds a private
    element no dictionary knows (UN) with Latin-1 text, then another image on the same association; the order's
    patient name needs UTF-8. The nested element stayed as received with nothing on record that it had been
    written in ISO_IR 100 (top-level ones were recorded): the OriginalAttributesSequence item now holds the
    sequence as received beside the previous SpecificCharacterSet."""
    import subprocess

    from engine.domain.handlers import OrdersHandler, order_policy
    from tests.conftest import need
    from tests.dicom.conftest import DCMTK
    from tests.dicom.store_peer import storescu
    from tests.domain.factories import apply_records, order, patient

    need(DCMTK, "DCMTK not installed")
    schadel = "Schädel".encode("latin-1") + b" "
    src = _ct()
    src.StudyInstanceUID = generate_uid()
    src.SpecificCharacterSet = "ISO_IR 100"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator = "T-D1100", "SRT"
    region.private_block(0x0019, "ACME 1.0", create=True).add_new(0x01, "UN", schadel)
    src.AnatomicRegionSequence = [region]
    src.file_meta.TransferSyntaxUID = IMPLICIT_LE
    path = tmp_path / "nested.dcm"
    src.save_as(path, enforce_file_format=True)
    other = _ct()
    other.SeriesInstanceUID = generate_uid()  # its own series: one series is never filed under two studies
    other_path = tmp_path / "other.dcm"
    other.save_as(other_path, enforce_file_format=True)
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("PX1", patient_name=CZECH),
            order("PLX", patient_id="PX1", accession_number="ACCX1", study_instance_uid=str(src.StudyInstanceUID))])
        done = storescu(scp.port, [path, other_path])
        assert done.returncode == 0, done.stderr[-2000:]
        assert {r.sop_instance_uid for r in scp.instances()} == {src.SOPInstanceUID, other.SOPInstanceUID}
        stored = scp.stored_path(str(src.SOPInstanceUID))
    dump = subprocess.run(["dcmdump", str(stored)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "\nE:" not in "\n" + dump.stderr, dump.stderr
    got = dcmread(stored)
    assert (str(got.PatientName), got.SpecificCharacterSet) == (CZECH, "ISO_IR 192")
    assert got.AnatomicRegionSequence[0][0x00191001].value == schadel  # kept as received
    old = got.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert old.SpecificCharacterSet == "ISO_IR 100"
    recorded = old.AnatomicRegionSequence[0]
    assert (recorded.CodeValue, recorded[0x00190010].value, recorded[0x00191001].value) == (
        "T-D1100", "ACME 1.0", schadel)
    assert got.PixelData == src.PixelData
