"""What an MPPS N-CREATE must carry and what an N-SET may change (PS3.4 Table F.7.2-1).

:data:`MPPS_ATTRIBUTES` is the table as data: for each attribute its requirement type
in the N-CREATE and in the N-SET (SCU side; ``None`` = "Not allowed" in the N-SET),
and for sequences the requirements inside each item. Attributes the table does not
name are Type 3 in both ("All other Attributes": 3/3). Code sequence items (the
code value macros, all 1C) are not checked.

* N-CREATE (:func:`n_create_problem`): a Type 1 attribute that is absent is Missing
  Attribute 0x0120, one present without a value Missing Attribute Value 0x0121
  (PS3.7 C.5.13, C.5.14). An absent Type 2 attribute is refused the same way only where
  the site asks for it (``mpps.require_type2_attributes``): its value may be empty
  anyway, so its absence loses nothing the engine uses, and modalities that leave
  empty ones out keep working.
* N-SET (:func:`n_set_problem`): an attribute "Not allowed" in the N-SET column
  (patient identity, the scheduled step references, the performing station and start
  date/time …) is No Such Attribute 0x0105 with the tags in the Attribute Identifier
  List (PS3.7 C.5.17; PS3.4 F.7.2.2.2 lets the SCU set only the attributes the table
  gives an N-SET usage). Items of a sequence it may set must carry their Type 1 and 2
  attributes, as in the N-CREATE.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

__all__ = [
    "MISSING_ATTRIBUTE",
    "MISSING_VALUE",
    "MPPS_ATTRIBUTES",
    "NO_SUCH_ATTRIBUTE",
    "Problem",
    "Req",
    "n_create_problem",
    "n_set_problem",
]

MISSING_ATTRIBUTE = 0x0120
MISSING_VALUE = 0x0121
NO_SUCH_ATTRIBUTE = 0x0105


@dataclass(frozen=True, slots=True)
class Req:
    """Requirement types of one attribute: N-CREATE, N-SET (None: not allowed), item attributes."""

    create: int
    set: int | None
    items: Mapping[str, Req] = field(default_factory=dict)


def _ref(kind: int = 1) -> dict[str, Req]:
    """Referenced SOP Class/Instance UID inside an item (1/1)."""
    return {"ReferencedSOPClassUID": Req(1, kind), "ReferencedSOPInstanceUID": Req(1, kind)}


_NOT = None
_SCHEDULED_STEP: dict[str, Req] = {
    "StudyInstanceUID": Req(1, _NOT),
    "ReferencedStudySequence": Req(2, _NOT, _ref()),
    "AccessionNumber": Req(2, _NOT),
    "RequestedProcedureID": Req(2, _NOT),
    "RequestedProcedureDescription": Req(2, _NOT),
    "ScheduledProcedureStepID": Req(2, _NOT),
    "ScheduledProcedureStepDescription": Req(2, _NOT),
    "ScheduledProtocolCodeSequence": Req(2, _NOT),
}
_PERFORMED_SERIES: dict[str, Req] = {
    "PerformingPhysicianName": Req(2, 2),
    "ProtocolName": Req(1, 1),
    "OperatorsName": Req(2, 2),
    "SeriesInstanceUID": Req(1, 1),
    "SeriesDescription": Req(2, 2),
    "RetrieveAETitle": Req(2, 2),
    "ReferencedImageSequence": Req(2, 2, _ref()),
    "ReferencedNonImageCompositeSOPInstanceSequence": Req(2, 2, _ref()),
}

#: PS3.4 Table F.7.2-1, top level (N-CREATE type, N-SET type for the SCU).
MPPS_ATTRIBUTES: dict[str, Req] = {
    # Performed Procedure Step Relationship
    "ScheduledStepAttributesSequence": Req(1, _NOT, _SCHEDULED_STEP),
    "PatientName": Req(2, _NOT),
    "PatientID": Req(2, _NOT),
    "IssuerOfPatientID": Req(3, _NOT),
    "IssuerOfPatientIDQualifiersSequence": Req(3, _NOT),
    "OtherPatientIDsSequence": Req(3, _NOT),
    "PatientBirthDate": Req(2, _NOT),
    "PatientSex": Req(2, _NOT),
    "ReferencedPatientSequence": Req(2, _NOT, _ref()),
    "AdmissionID": Req(3, _NOT),
    "IssuerOfAdmissionIDSequence": Req(3, _NOT),
    "ServiceEpisodeID": Req(3, _NOT),
    "IssuerOfServiceEpisodeIDSequence": Req(3, _NOT),
    "ServiceEpisodeDescription": Req(3, _NOT),
    # Performed Procedure Step Information
    "PerformedProcedureStepID": Req(1, _NOT),
    "PerformedStationAETitle": Req(1, _NOT),
    "PerformedStationName": Req(2, _NOT),
    "PerformedLocation": Req(2, _NOT),
    "PerformedProcedureStepStartDate": Req(1, _NOT),
    "PerformedProcedureStepStartTime": Req(1, _NOT),
    "PerformedProcedureStepStatus": Req(1, 3),
    "PerformedProcedureStepDescription": Req(2, 3),
    "PerformedProcedureTypeDescription": Req(2, 3),
    "ProcedureCodeSequence": Req(2, 3),
    "ReasonForPerformedProcedureCodeSequence": Req(3, 3),
    "PerformedProcedureStepEndDate": Req(2, 3),
    "PerformedProcedureStepEndTime": Req(2, 3),
    "CommentsOnThePerformedProcedureStep": Req(3, 3),
    "PerformedProcedureStepDiscontinuationReasonCodeSequence": Req(3, 3),
    # Image Acquisition Results
    "Modality": Req(1, _NOT),
    "StudyID": Req(2, _NOT),
    "PerformedProtocolCodeSequence": Req(2, 3),
    "PerformedSeriesSequence": Req(2, 3, _PERFORMED_SERIES),
}


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a request is refused: its DIMSE ``status`` and the attributes at fault."""

    status: int
    keywords: tuple[str, ...]

    @property
    def tags(self) -> tuple[int, ...]:
        """The attributes' tags, for the Attribute Identifier List (0000,1005)."""
        return tuple(int(tag_for_keyword(k) or 0) for k in self.keywords)

    @property
    def comment(self) -> str:
        """An Error Comment (LO, at most 64 characters) naming the attributes."""
        names = {MISSING_ATTRIBUTE: "missing", MISSING_VALUE: "without value", NO_SUCH_ATTRIBUTE: "not settable"}
        return f"{names.get(self.status, 'invalid')}: {' '.join(self.keywords)}"[:64]


def _empty(ds: Dataset, keyword: str) -> bool:
    value = ds[keyword].value
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return not list(value)  # an empty sequence or multi-value
    return value is None or value in ("", b"")


def _missing(ds: Dataset, reqs: Mapping[str, Req], kind: str, strict_type2: bool) -> tuple[list[str], list[str]]:
    """(absent Type 1/2 attributes, Type 1 attributes without a value) of ``ds`` and its items."""
    absent: list[str] = []
    empty: list[str] = []
    for keyword, req in reqs.items():
        level = req.create if kind == "create" else req.set
        if keyword not in ds:
            if level == 1 or (level == 2 and strict_type2):
                absent.append(keyword)
            continue
        if level == 1 and _empty(ds, keyword):
            empty.append(keyword)
        for item in (ds[keyword].value or []) if req.items else []:
            a, e = _missing(item, req.items, kind, strict_type2)
            absent += [k for k in a if k not in absent]
            empty += [k for k in e if k not in empty]
    return absent, empty


def n_create_problem(ds: Dataset, strict_type2: bool = False) -> Problem | None:
    """Why an N-CREATE attribute list is refused (0x0120, 0x0121), or None if it is complete."""
    absent, empty = _missing(ds, MPPS_ATTRIBUTES, "create", strict_type2)
    if absent:
        return Problem(MISSING_ATTRIBUTE, tuple(absent))
    if empty:
        return Problem(MISSING_VALUE, tuple(empty))
    return None


def n_set_problem(ds: Dataset, strict_type2: bool = False) -> Problem | None:
    """Why an N-SET modification list is refused (0x0105, 0x0120, 0x0121), or None."""
    refused = tuple(k for k, req in MPPS_ATTRIBUTES.items() if req.set is None and k in ds)
    if refused:
        return Problem(NO_SUCH_ATTRIBUTE, refused)
    settable = {k: req for k, req in MPPS_ATTRIBUTES.items() if req.set is not None and k in ds}
    absent, empty = _missing(ds, settable, "set", strict_type2)
    if absent:
        return Problem(MISSING_ATTRIBUTE, tuple(absent))
    if empty:
        return Problem(MISSING_VALUE, tuple(empty))
    return None
