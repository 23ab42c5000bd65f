"""HL7 v2 messages and MPPS exchanges the FHIR tests drive the engine with."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from tests.dicom.mpps_datasets import n_create_dataset, n_set_dataset, performed_series, scheduled_step
from tests.dicom.store_peer import store_one


def orm(n: int, pid: str, name: str = "PARKER^ANN", modality: str = "CT", control: str = "NW",
        status: str = "SC", study_uid: str = "") -> str:
    """An ORM^O01 with placer PL<n>, filler FL<n>, accession ACC<n> and (when given) its Study Instance UID."""
    code = {"CT": "CTHEAD^CT head^L", "MR": "MRBRAIN^MR brain^L"}[modality]
    obr = f"OBR|1|PL{n}|FL{n}|{code}" + "|" * 14 + f"ACC{n}|RP{n}|SPS{n}" + "|" * 4 + modality
    segments = [
        f"MSH|^~\\&|RIS|NORTH|RADBRIDGE|NORTH|20261122080000||ORM^O01|O{n}{control}|P|2.3.1",
        f"PID|1||{pid}^^^NORTH^MR||{name}||19800202|F",
        "PV1|1|O|RAD||||1234^REFER^DOC",
        f"ORC|{control}|PL{n}|FL{n}||{status}||^^^20261122093000^^R",
        obr,
    ]
    if study_uid:
        segments.append(f"ZDS|{study_uid}^RADBRIDGE^Application^DICOM")
    return "\r".join(segments) + "\r"


def adt(event: str, pid: str, name: str, mrg: str = "", control: str = "") -> str:
    """An ADT message (A04, A08, A40 with MRG …)."""
    control = control or f"A{event}{pid}{mrg}"
    segments = [f"MSH|^~\\&|HIS|NORTH|RADBRIDGE|NORTH|20261122090000||ADT^{event}|{control}|P|2.5",
                f"EVN|{event}|20261122090000", f"PID|1||{pid}^^^NORTH^MR||{name}||19800202|F"]
    if mrg:
        segments.append(f"MRG|{mrg}^^^NORTH^MR")
    return "\r".join(segments) + "\r"


def oru(n: int, control: str, status: str, *lines: str, impression: str = "") -> str:
    """An ORU^R01 from the reporting system for the order of :func:`orm` ``n`` (placer PL<n>), one OBX per line."""
    obx = [f"OBX|{i}|TX|GDT^Findings||{line}||||||{status[:1]}" for i, line in enumerate(lines, 1)]
    if impression:
        obx.append(f"OBX|{len(obx) + 1}|TX|IMP^Impression||{impression}||||||{status[:1]}")
    return "\r".join([
        f"MSH|^~\\&|REPORTING|NORTH|RADBRIDGE|NORTH|20261122110000||ORU^R01|{control}|P|2.5.1|||||UNICODE UTF-8",
        f"PID|1||X{n}^^^NORTH^MR||REPORTED^RAY",
        f"OBR|1|PL{n}|FL{n}|CTHEAD^CT head^L|||20261122093000" + "|" * 15 + f"20261122110000|||{status}|||||||"
        "RR1&Radiologist&Rita",
        *obx,
    ]) + "\r"


def mpps_performed(port: int, study_uid: str, accession: str, patient_id: str, mpps_uid: str,
                   series_uid: str, image_uids: tuple[str, ...]) -> tuple[int, int]:
    """N-CREATE (IN PROGRESS) then N-SET (COMPLETED with one performed series) with pynetdicom; both statuses."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        create = n_create_dataset("IN PROGRESS", patient_id, scheduled_step(study_uid, accession, "SPS1"))
        status, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, mpps_uid)
        done = n_set_dataset("COMPLETED", performed_series(series_uid, *image_uids))
        status2, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, mpps_uid)
    finally:
        assoc.release()
    return int(status.Status), int(status2.Status)


def c_store(port: int, corpus: Path, study_uid: str, accession: str, patient_id: str) -> int:
    """One CT image (pynetdicom SCU, as a modality would) under the modality's own Study Instance UID."""
    ds = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, f"{study_uid}.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study_uid}.1.1"
    ds.AccessionNumber, ds.PatientID = accession, patient_id
    return store_one(port, ds)
