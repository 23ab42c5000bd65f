"""ServiceRequest (R4) from ``orders``: one requested procedure, its identifiers and state.

Identifiers carry their table 0203 type: PLAC (ORC-2), FILL (ORC-3) and ACSN
(the accession number, system from its issuer). ``status`` follows the first
scheduled step (a table below); ``occurrenceDateTime`` is its scheduled start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from engine.domain.tables import orders, procedure_steps
from engine.fhir.instant import instant, search_range
from engine.fhir.model import Built, FhirSettings, Param, identifier_system
from engine.fhir.resources.common import ids, reference, type_coding

__all__ = ["INCLUDES", "MANDATORY", "PARAMS", "TYPE", "build", "kinds", "scheduled_start"]

TYPE: str = "ServiceRequest"
PARAMS: tuple[Param, ...] = (
    Param("identifier", "token", documentation="placer, filler and accession (type ACSN) numbers"),
    Param("patient", "reference", ("Patient",)),
    Param("subject", "reference", ("Patient",)),
    Param("status", "token"),
    Param("intent", "token"),
    Param("code", "token"),
    Param("authored", "date"),
    Param("occurrence", "date"),
)
#: Its elements of cardinality 1..1: kept by ``_elements`` (R4 3.1.1.5.9, mandatory elements SHOULD be returned).
MANDATORY: tuple[str, ...] = ("status", "intent", "subject")
INCLUDES: tuple[str, ...] = ("ServiceRequest:patient", "ServiceRequest:subject")

#: Scheduled Procedure Step Status (0040,0020) → ServiceRequest.status.
STATUS = {"SCHEDULED": "active", "ARRIVED": "active", "READY": "active", "STARTED": "active",
          "DEPARTED": "active", "COMPLETED": "completed", "CANCELED": "revoked", "DISCONTINUED": "revoked",
          "EXPIRED": "unknown"}
#: RequestedProcedurePriority (0040,1003) → ServiceRequest.priority.
PRIORITY = {"STAT": "stat", "HIGH": "urgent", "ROUTINE": "routine", "MEDIUM": "routine", "LOW": "routine"}
#: DICOM coding scheme designators (PS3.16 Table 8-1) → FHIR code systems.
CODE_SYSTEMS = {"LN": "http://loinc.org", "SCT": "http://snomed.info/sct", "SRT": "http://snomed.info/sct",
                "RADLEX": "http://radlex.org", "RDLX": "http://radlex.org", "DCM": "http://dicom.nema.org/resources/ontology/DCM",
                "C4": "http://www.ama-assn.org/go/cpt", "CPT": "http://www.ama-assn.org/go/cpt"}
_IMAGING = {"coding": [{"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}]}


def kinds() -> Mapping[str, Callable[[Connection, set[str]], set[str]]]:
    """Pending kinds that change ServiceRequests."""
    return {"ServiceRequest": lambda conn, keys: {str(pk) for pk in ids(keys)}}


def scheduled_start(value: str, settings: FhirSettings) -> tuple[str, tuple[str, str]] | None:
    """A step's ``start_datetime`` (YYYYMMDDHHMMSS, site time) as a FHIR dateTime and its range."""
    if len(value) != 14 or not value.isdigit():
        return None
    try:  # slicing, not strptime: ~10x cheaper, and each projected order and study parses one
        moment = datetime(int(value[:4]), int(value[4:6]), int(value[6:8]), int(value[8:10]), int(value[10:12]),
                          int(value[12:]), tzinfo=settings.site_zone)
    except ValueError:
        return None
    text = moment.isoformat(timespec="seconds")
    return text, search_range(text, settings.site_zone)


def _identifiers(row: Any, settings: FhirSettings) -> list[dict[str, Any]]:
    found = []
    for code, display, number, namespace, fallback in (
        ("PLAC", "Placer Identifier", row.placer_order_number, row.placer_order_namespace, "urn:radbridge:placer"),
        ("FILL", "Filler Identifier", row.filler_order_number, row.filler_order_namespace, "urn:radbridge:filler"),
        ("ACSN", "Accession ID", row.accession_number, row.issuer_of_accession_number, settings.accession_system),
    ):
        if number:
            found.append({"type": type_coding(code, display),
                          "system": identifier_system(settings, namespace, fallback), "value": number})
    return found


def _code(row: Any) -> dict[str, Any] | None:
    concept: dict[str, Any] = {}
    if row.procedure_code_value:
        coding = {"code": row.procedure_code_value}
        system = CODE_SYSTEMS.get(row.procedure_coding_scheme.upper())
        coding = {"system": system, **coding} if system else coding
        if row.procedure_code_meaning:
            coding["display"] = row.procedure_code_meaning
        concept["coding"] = [coding]
    if row.requested_procedure_description:
        concept["text"] = row.requested_procedure_description
    return concept or None


#: Which step of an order (one per IPC of an OMI^O23) gives the request its status and occurrence: an active
#: one, else a completed one, else any. CT done and MR still scheduled is an active request; CT dropped by an
#: XO (DISCONTINUED) and MR scheduled is not a revoked one.
_RANK = {"active": 0, "completed": 1}


def _rank(step: Any) -> int:
    return _RANK.get(STATUS.get(step.status, "unknown"), 2)


def _body(row: Any, step: Any, settings: FhirSettings) -> Built:
    status = STATUS.get(step.status, "unknown") if step is not None else "unknown"
    body: dict[str, Any] = {"resourceType": TYPE, "id": str(row.id), "identifier": _identifiers(row, settings),
                            "status": status, "intent": "order", "category": [_IMAGING]}
    built = Built(TYPE, str(row.id), body)
    if row.priority in PRIORITY:
        body["priority"] = PRIORITY[row.priority]
    code = _code(row)
    if code is not None:
        body["code"] = code
        built.tokens += [("code", c.get("system", ""), c["code"]) for c in code.get("coding", [])]
    body["subject"] = reference("Patient", row.patient_pk)
    start = scheduled_start(step.start_datetime, settings) if step is not None else None
    if start is not None:
        body["occurrenceDateTime"] = start[0]
        built.dates.append(("occurrence", *start[1]))
    body["authoredOn"] = instant(row.created_at)
    built.dates.append(("authored", *search_range(body["authoredOn"], settings.site_zone)))
    built.refs += [("patient", body["subject"]["reference"]), ("subject", body["subject"]["reference"])]
    built.tokens += [("identifier", i["system"], i["value"]) for i in body["identifier"]]
    built.tokens += [("status", "http://hl7.org/fhir/request-status", status),
                     ("intent", "http://hl7.org/fhir/request-intent", "order")]
    return built


def build(conn: Connection, keys: set[str], settings: FhirSettings) -> dict[str, Built | None]:
    """The ServiceRequests with these ids (None for an id with no order)."""
    pks = ids(keys)
    built: dict[str, Built | None] = dict.fromkeys(keys)
    steps: dict[int, Any] = {}
    s = procedure_steps.c
    for step in conn.execute(select(s.order_pk, s.status, s.start_datetime, s.modality)
                             .where(s.order_pk.in_(pks)).order_by(s.id.desc())):
        order_pk = int(step.order_pk)
        if order_pk not in steps or _rank(step) <= _rank(steps[order_pk]):  # descending: the first wins a tie
            steps[order_pk] = step
    for row in conn.execute(select(orders).where(orders.c.id.in_(pks))):
        built[str(row.id)] = _body(row, steps.get(int(row.id)), settings)
    return built
