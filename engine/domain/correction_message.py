"""The HL7 ADT a PACS gets instead of corrected images (``on_correction: hl7``; IHE RAD-12 / RAD-8 style).

Pure. A correction that changed the patient's identifier (Patient ID or its issuer:
an A40 merge or an A47 id change upstream) becomes an ADT^A40 whose MRG-1 names the
identifier the PACS holds the images under; any other change of the patient's
attributes becomes an ADT^A08. The values are those the corrected images now carry,
so the PACS ends up agreeing with radbridge's archive. The control id is derived
from the content: a redelivery carries the same MSH-10.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from pydicom import Dataset

from engine.hl7.er7 import Separators, escape

__all__ = ["IDENTITY_KEYWORDS", "PATIENT_KEYWORDS", "CorrectedPatient", "build_correction_adt", "control_id"]

_SEPS = Separators()
#: header attributes whose change is a new patient identifier (A40).
IDENTITY_KEYWORDS = frozenset({"PatientID", "IssuerOfPatientID"})
#: header attributes an ADT can carry: a change of any of them is worth telling the PACS.
PATIENT_KEYWORDS = IDENTITY_KEYWORDS | {"PatientName", "PatientBirthDate", "PatientSex", "OtherPatientIDsSequence"}


@dataclass(frozen=True, slots=True)
class CorrectedPatient:
    """The patient as a corrected image now says, and the identifier it had before."""

    patient_id: str
    issuer: str
    patient_name: str
    birth_date: str
    sex: str
    prior_patient_id: str
    prior_issuer: str

    @classmethod
    def from_dataset(cls, ds: Dataset, prior_patient_id: str, prior_issuer: str) -> CorrectedPatient:
        """From a corrected header and the identifier the image carried before."""
        def text(keyword: str) -> str:
            return str(ds.get(keyword, "") or "")
        return cls(text("PatientID"), text("IssuerOfPatientID"), text("PatientName"), text("PatientBirthDate"),
                   text("PatientSex"), prior_patient_id, prior_issuer)

    @property
    def merged(self) -> bool:
        """True when the identifier changed (the PACS must move the images: A40)."""
        return (self.patient_id, self.issuer) != (self.prior_patient_id, self.prior_issuer)


def _e(value: str) -> str:
    return escape(value, _SEPS)


def _xpn(pn: str) -> str:
    """DICOM PN family^given^middle^prefix^suffix → XPN family^given^middle^suffix^prefix."""
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    return "^".join(_e(p) for p in (parts[0], parts[1], parts[2], parts[4], parts[3])).rstrip("^")


def _cx(patient_id: str, issuer: str) -> str:
    return f"{_e(patient_id)}^^^{_e(issuer)}" if issuer else _e(patient_id)


def control_id(patient: CorrectedPatient) -> str:
    """MSH-10 (20 characters at most) from the content: the same correction, the same id."""
    digest = hashlib.sha256(repr(patient).encode("utf-8")).hexdigest()
    return f"RBC{digest[:17]}"


def build_correction_adt(patient: CorrectedPatient, sending_application: str, now: datetime) -> bytes:
    """ADT^A40^ADT_A39 when the identifier changed, else ADT^A08^ADT_A01; UTF-8 (MSH-18 UNICODE UTF-8)."""
    when = now.strftime("%Y%m%d%H%M%S")
    event, structure = ("A40", "ADT_A39") if patient.merged else ("A08", "ADT_A01")
    pid = (f"PID|1||{_cx(patient.patient_id, patient.issuer)}||{_xpn(patient.patient_name)}||"
           f"{_e(patient.birth_date)}|{_e(patient.sex)}")
    segments = [
        f"MSH|^~\\&|{_e(sending_application)}||||{when}||ADT^{event}^{structure}|{control_id(patient)}"
        "|P|2.5.1|||||UNICODE UTF-8",
        f"EVN|{event}|{when}",
        pid,
    ]
    if patient.merged:
        segments.append(f"MRG|{_cx(patient.prior_patient_id, patient.prior_issuer)}")
    else:
        segments.append("PV1|1|U")
    return ("\r".join(segments) + "\r").encode("utf-8")
