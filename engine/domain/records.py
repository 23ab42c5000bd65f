"""Domain records: the contract between mapping files and domain handlers.

A mapping turns one inbound message into a list of records, each a
``record`` type name plus a dict of fields; handlers validate the dict into
one of these models. Field names use the standards' words (DICOM keywords in
snake case, HL7 field meanings) so an analyst recognises them. Values are
plain strings in DICOM value formats (PN ``Family^Given^Middle^Prefix^Suffix``,
DA ``YYYYMMDD``, DT ``YYYYMMDDHHMMSS``); empty means "not given".

A field the message sent as the HL7 explicit null ``""`` (HL7 v2.5.1 2.5.3:
delete the value the receiver holds) is empty too, and named in the record's
``cleared`` (engine.mapping.null): the domain blanks the stored value of the
fields it lets a message clear and ignores the rest.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "INPUT_TYPES",
    "RECORD_TYPES",
    "CodedValue",
    "MergeRecord",
    "OrderCode",
    "OrderRecord",
    "OruHeader",
    "OtherPatientId",
    "PatientRecord",
    "ReportLine",
    "ReportRecord",
    "ReportResult",
    "RequestLine",
    "ResultLine",
]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Mapped(_Record):
    """A record a mapping outputs: it may name fields the message explicitly nulled."""

    #: Fields sent as ``""``: set by the mapping layer, never mapped by a file (engine.mapping.targetnames).
    cleared: tuple[str, ...] = ()


#: The most an identifier may hold: its DICOM VR's maximum (PS3.5 6.2: LO and UI 64, SH and CS 16),
#: which is also its column's length. Longer is AE 102 at its field (engine.domain.handlers),
#: on every database alike, never a cut identifier. The step's own identifiers (Requested Procedure
#: and SPS IDs, station name and AE titles, location) are SH/AE in DICOM but kept whole up to LO:
#: see engine.domain.lengths. A PN column holds PN (324: five components of 64 and four '^').
LO, SH, PN = 64, 16, 324


class OtherPatientId(_Record):
    """A PID-3 repetition from an authority other than the primary one."""

    patient_id: str = Field(max_length=LO)
    issuer: str = Field("", max_length=LO)
    type_of_id: str = Field("", max_length=SH)  # PID-3.5 identifier type code (MR, PI, SS …)


class CodedValue(_Record):
    """A code (DICOM code sequence item / HL7 CE/CWE)."""

    code_value: str = ""
    coding_scheme_designator: str = ""
    code_meaning: str = ""


class OrderCode(CodedValue):
    """An order's procedure or protocol code: value and scheme are looked up and matched, so longer
    than their LO columns is AE 102 (a report's code is cut where stored); a meaning is cut to LO."""

    code_value: str = Field("", max_length=LO)
    coding_scheme_designator: str = Field("", max_length=LO)


class PatientRecord(_Mapped):
    """ADT A01/A04/A05/A08/A31 and the PID of every order. Identity = patient_id + issuer."""

    record: Literal["patient"] = "patient"
    patient_id: str = Field(min_length=1, max_length=LO)
    issuer: str = Field("", max_length=LO)  # IssuerOfPatientID, from PID-3.4.1
    other_ids: list[OtherPatientId] = Field(default_factory=list)
    patient_name: str = Field("", max_length=PN)  # DICOM PN
    birth_date: str = ""  # DA
    sex: str = ""  # M, F, O
    admission_id: str = Field("", max_length=LO)  # PV1-19.1
    referring_physician_name: str = Field("", max_length=PN)  # PV1-8 as PN
    patient_class: str = ""  # PV1-2 (I, O, E …)
    assigned_patient_location: str = ""  # PV1-3, the visit's current location
    prior_patient_location: str = ""  # PV1-6 (A02 transfer)
    event: str = ""  # trigger event (A01, A08 …)


class MergeRecord(_Mapped):
    """ADT A40 (one per PID/MRG pair) and A47: ``prior`` merged into / renamed to ``survivor``."""

    record: Literal["merge"] = "merge"
    kind: Literal["merge", "change_id"] = "merge"
    patient_id: str = Field(min_length=1, max_length=LO)  # survivor, PID-3
    issuer: str = Field("", max_length=LO)
    other_ids: list[OtherPatientId] = Field(default_factory=list)  # the other PID-3 repetitions
    prior_patient_id: str = Field(min_length=1, max_length=LO)  # MRG-1
    prior_issuer: str = Field("", max_length=LO)
    prior_other_ids: list[OtherPatientId] = Field(default_factory=list)  # the other MRG-1 repetitions


class OrderRecord(_Mapped):
    """One ORC/OBR (or IPC) group of ORM^O01, OMI^O23, OMG^O19: a requested procedure and its step.

    Field sources follow ../shared/reference/RADIOLOGY_HL7_DICOM.md section 3.
    """

    record: Literal["order"] = "order"
    order_control: str = Field(min_length=1)  # ORC-1
    order_status: str = ""  # ORC-5
    # empty only when the message has no PID (ORM^O01's patient group is optional): a follow-up (CA,
    # DC, SC ...) is found by its order number; a new order without one is AE 101 (engine.domain.orders)
    patient_id: str = Field("", max_length=LO, json_schema_extra={"mapped": True})  # still a mapping's to map
    issuer: str = Field("", max_length=LO)
    other_ids: list[OtherPatientId] = Field(default_factory=list)  # the other PID-3 repetitions
    placer_order_number: str = Field("", max_length=LO)  # ORC-2.1 (or OBR-2.1)
    placer_order_namespace: str = Field("", max_length=LO)  # ORC-2.2 (or OBR-2.2): the placer's namespace id
    filler_order_number: str = Field("", max_length=LO)  # ORC-3.1 (or OBR-3.1)
    filler_order_namespace: str = Field("", max_length=LO)  # ORC-3.2 (or OBR-3.2)
    accession_number: str = Field("", max_length=SH)  # OBR-18 / IPC-1
    issuer_of_accession_number: str = Field("", max_length=LO)
    requested_procedure_id: str = Field("", max_length=LO)  # OBR-19 / IPC-2 (SH, kept whole up to LO)
    study_instance_uid: str = Field("", max_length=LO)  # ZDS-1 / IPC-3
    scheduled_procedure_step_id: str = Field("", max_length=LO)  # OBR-20 / IPC-4 (SH, kept whole up to LO)
    modality: str = Field("", max_length=SH)  # OBR-24 / IPC-5 (CS)
    scheduled_station_ae_title: str = ""  # IPC-9 or a site rule table; several joined by "\\", each up to LO
    scheduled_station_name: str = Field("", max_length=LO)  # IPC-7 (SH, kept whole up to LO)
    scheduled_procedure_step_location: str = Field("", max_length=LO)  # IPC-8 (SH, kept whole up to LO)
    scheduled_start: str = ""  # DT from TQ1-7 / ORC-7.4 / OBR-27.4 / OBR-7
    priority: str = ""  # RequestedProcedurePriority: STAT, HIGH, ROUTINE, MEDIUM, LOW
    requested_procedure_description: str = ""
    requested_procedure_code: OrderCode | None = None
    scheduled_procedure_step_description: str = ""
    scheduled_protocol_code: OrderCode | None = None
    requesting_physician: str = Field("", max_length=PN)  # PN
    referring_physician_name: str = Field("", max_length=PN)  # PN
    scheduled_performing_physician_name: str = Field("", max_length=PN)  # PN
    admission_id: str = Field("", max_length=LO)
    universal_service_id: str = ""  # OBR-4.1, for non-imaging filters
    diagnostic_service_section: str = ""  # OBR-24 raw
    order_detail_segment: str = ""  # the group's order detail: OBR, RXO, ODS, RQD ... ("" unknown)


class ReportLine(_Record):
    """One OBX of a report: a line (or paragraph) of its text, escapes already decoded."""

    value_type: str = ""  # OBX-2: TX, FT, ST (other types are not report text)
    observation_id: str = ""  # OBX-3.1, e.g. GDT (body), IMP (impression), ADT (addendum)
    section: str = ""  # body | impression | addendum (tables/report_sections.csv)
    text: str = ""  # OBX-5, repetitions joined by line breaks


class ReportRecord(_Mapped):
    """One OBR group of ORU^R01: a radiology report (one version of it) for one order.

    The order is named by the same EI numbers as orders (engine.domain.order_identity),
    else by accession number or Study Instance UID. ``status`` is OBR-25 as the
    reporting system sent it ("F", "Final", "Wet Read"); the site table
    ``tables/report_status.csv`` says what it means.
    """

    record: Literal["report"] = "report"
    # empty only when the ORU has no PID (its patient group is optional): the report must then find its
    # order, whose patient it takes (engine.domain.reports); still a mapping's to map
    patient_id: str = Field("", json_schema_extra={"mapped": True})
    issuer: str = ""
    placer_order_number: str = ""  # OBR-2.1 (or ORC-2.1)
    placer_order_namespace: str = ""
    filler_order_number: str = ""  # OBR-3.1 (or ORC-3.1)
    filler_order_namespace: str = ""
    accession_number: str = ""  # OBR-18 / ZDS / OBR-3 by the mapping's choice
    study_instance_uid: str = ""  # ZDS-1
    procedure_code: CodedValue | None = None  # OBR-4
    status: str = Field(min_length=1)  # OBR-25 as sent
    observation_datetime: str = ""  # OBR-7 (DT)
    status_datetime: str = ""  # OBR-22 (DT)
    interpreter: str = ""  # OBR-32 as PN
    interpreter_id: str = ""  # OBR-32.1.1
    lines: list[ReportLine] = Field(default_factory=list)


RECORD_TYPES: dict[str, type[_Record]] = {
    "patient": PatientRecord,
    "merge": MergeRecord,
    "order": OrderRecord,
    "report": ReportRecord,
}


# Inputs of report -> HL7 v2 mappings (mappings/report-to-oru.yaml): what the engine hands
# the mapping for one report version and one receiver (engine.domain.report_out).


class OruHeader(_Record):
    """The message being built: its control id (the same for every resend of one version) and time."""

    control_id: str
    datetime: str  # HL7 DTM with offset, e.g. 20261205120000+0000


class RequestLine(_Record):
    """The order as the EHR sent it: EI components exactly as received, and what was ordered."""

    placer_order_number: str = ""
    placer_order_namespace: str = ""
    placer_universal_id: str = ""
    placer_universal_id_type: str = ""
    filler_order_number: str = ""
    filler_order_namespace: str = ""
    filler_universal_id: str = ""
    filler_universal_id_type: str = ""
    accession_number: str = ""
    study_instance_uid: str = ""
    requested_procedure_description: str = ""
    procedure_code: CodedValue | None = None
    modality: str = ""
    scheduled_start: str = ""  # DT
    requesting_physician: str = ""  # PN


class ResultLine(_Record):
    """One line of the report text: one OBX."""

    set_id: str
    text: str = ""


class ReportResult(_Record):
    """One version of a report as the EHR receives it."""

    version: str
    result_status: str  # P, F, C, X (OBR-25 and OBX-11)
    fhir_status: str
    observation_datetime: str = ""  # DT
    status_datetime: str = ""  # DT
    interpreter: str = ""  # PN
    interpreter_id: str = ""
    conclusion: str = ""
    text: str = ""
    lines: list[ResultLine] = Field(default_factory=list)


#: Record-source mapping inputs besides the records themselves (``header.control_id`` …).
INPUT_TYPES: dict[str, type[_Record]] = {"header": OruHeader, "request": RequestLine, "result": ReportResult}
