"""The HL7 ADT a PACS gets instead of corrected images (``on_correction: hl7``; IHE RAD-12 / RAD-8 style).

Pure. A correction that changed the patient's identifier (Patient ID or its issuer)
tells the PACS the same kind of change radbridge was told: after an A47 (change of
identifier) an ADT^A47^ADT_A30, otherwise (an A40 merge, or an order that moved the
study) an ADT^A40^ADT_A39; in both PID-3 is the new identifier and MRG-1 the one the
PACS holds the images under. Any other change of the patient's attributes becomes an
ADT^A08. The values are those the corrected images now carry, so the PACS ends up
agreeing with radbridge's archive. The control id is derived from the correction
event and the content: a redelivery carries the same MSH-10, another event its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from pydicom import Dataset

from engine.hl7.er7 import Separators, escape

__all__ = ["IDENTITY_KEYWORDS", "PATIENT_KEYWORDS", "CorrectedPatient", "build_correction_adt", "control_id",
           "event_of"]

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
        """True when the identifier changed (the PACS must move the images: A40 or A47)."""
        return (self.patient_id, self.issuer) != (self.prior_patient_id, self.prior_issuer)

    @property
    def key(self) -> str:
        """SHA-256 (hex) of every value: two corrections to the same identity have the same key."""
        return hashlib.sha256(repr(self).encode("utf-8")).hexdigest()


def _e(value: str) -> str:
    return escape(value, _SEPS)


def _xpn(pn: str) -> str:
    """DICOM PN family^given^middle^prefix^suffix → XPN family^given^middle^suffix^prefix; the
    ideographic and phonetic groups of a PN (``Yamada^Tarou=山田^太郎``) are further repetitions
    marked by XPN-8 (table 0465: I, P), as a Japanese HIS sends them."""
    reps = []
    for code, group in zip(("", "I", "P"), pn.split("="), strict=False):
        if not group:
            continue
        parts = (group.split("^") + [""] * 5)[:5]
        rep = "^".join(_e(p) for p in (parts[0], parts[1], parts[2], parts[4], parts[3]))
        reps.append(f"{rep}^^^{code}" if code else rep.rstrip("^"))
    return "~".join(reps)


def _cx(patient_id: str, issuer: str) -> str:
    return f"{_e(patient_id)}^^^{_e(issuer)}" if issuer else _e(patient_id)


#: (identifier changed, the upstream event) -> (event, message structure) told to the PACS.
_EVENTS = {
    (True, "A47"): ("A47", "ADT_A30"),
    (True, ""): ("A40", "ADT_A39"),
    (False, ""): ("A08", "ADT_A01"),
}


def event_of(patient: CorrectedPatient, trigger: str = "") -> tuple[str, str]:
    """The ADT event and structure for ``patient`` corrected after upstream event ``trigger``."""
    return _EVENTS.get((patient.merged, trigger)) or _EVENTS[(patient.merged, "")]


def control_id(patient: CorrectedPatient, event_key: str = "") -> str:
    """MSH-10 (20 characters at most) from the correction event and the content: the same correction,
    the same id; another correction event, another id."""
    digest = hashlib.sha256(f"{event_key}|{patient.key}".encode()).hexdigest()
    return f"RBC{digest[:17]}"


def build_correction_adt(patient: CorrectedPatient, sending_application: str, now: datetime, trigger: str = "",
                         event_key: str = "") -> bytes:
    """ADT^A47^ADT_A30 (after an A47) or ADT^A40^ADT_A39 when the identifier changed, else ADT^A08^ADT_A01;
    UTF-8 (MSH-18 UNICODE UTF-8). ``event_key`` names the correction event (MSH-10 derives from it)."""
    when = now.strftime("%Y%m%d%H%M%S")
    event, structure = event_of(patient, trigger)
    pid = (f"PID|1||{_cx(patient.patient_id, patient.issuer)}||{_xpn(patient.patient_name)}||"
           f"{_e(patient.birth_date)}|{_e(patient.sex)}")
    segments = [
        f"MSH|^~\\&|{_e(sending_application)}||||{when}||ADT^{event}^{structure}|{control_id(patient, event_key)}"
        "|P|2.5.1||||||UNICODE UTF-8",  # MSH-13..17 empty: the charset is MSH-18
        f"EVN|{event}|{when}",
        pid,
    ]
    if patient.merged:
        segments.append(f"MRG|{_cx(patient.prior_patient_id, patient.prior_issuer)}")
    else:
        segments.append("PV1|1|U")
    return ("\r".join(segments) + "\r").encode("utf-8")
