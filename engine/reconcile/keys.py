"""The keys of an image header that name its order (reference section 6, IHE RAD TF-2 4.8.4.1.3).

In the order of trust: the Scheduled Procedure Step IDs in RequestAttributesSequence
(the modality copied them from the worklist item), the Study Instance UID, then the
Accession Number together with the Patient ID.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

__all__ = ["MatchKeys"]


def _text(ds: Dataset, keyword: str) -> str:
    """A value as stripped text; "" when absent or not decodable (a header value is as sent)."""
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # one malformed value must not stop matching on the others
        return ""


@dataclass(frozen=True, slots=True)
class MatchKeys:
    """What one instance says about its order."""

    sps_ids: tuple[str, ...] = ()
    study_instance_uid: str = ""
    accession_number: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    #: Not a key: among the steps of the one order the keys name (an OMI^O23 with an IPC per step), an image
    #: without SPS ID goes to the step of its own modality (else the first open one).
    modality: str = ""

    @classmethod
    def from_dataset(cls, ds: Dataset) -> MatchKeys:
        """Read the keys tolerantly: a missing or broken attribute is an empty key."""
        try:
            items = list(ds.get("RequestAttributesSequence", None) or [])
        except Exception:  # a broken sequence names no step
            items = []
        sps = dict.fromkeys(v for v in (_text(item, "ScheduledProcedureStepID") for item in items) if v)
        return cls(tuple(sps), _text(ds, "StudyInstanceUID"), _text(ds, "AccessionNumber"),
                   _text(ds, "PatientID"), _text(ds, "IssuerOfPatientID"), _text(ds, "Modality"))
