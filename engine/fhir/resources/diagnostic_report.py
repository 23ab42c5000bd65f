"""DiagnosticReport (R4) from ``reports`` / ``report_versions``: the radiology report and its versions.

The id is radbridge's report number. A report is published once it is attached to
its order (a report waiting for an order the engine does not know yet is not
served, as it is not sent to the EHR either). Its FHIR versions are the report's
versions: ``meta.versionId`` N is report version N (an addendum, a correction, a
cancel each add one), and vread / ``_history`` serve every version, built from
``report_versions``. A change that is not a new report version (the order's
patient merged into another) rewrites the current version's references.

What each element comes from:

* ``status``: the version's FHIR status (the site table ``report_status.csv``), one of
  the R4 codes, else ``unknown``;
* ``category``: LOINC LP29684-5 and HL7 v2 table 0074 ``RAD`` (Radiology);
* ``code``: the order's procedure code (else the report's OBR-4), else LOINC 18748-4;
* ``subject`` the order's Patient, ``basedOn`` its ServiceRequest, ``imagingStudy``
  the studies acquired for the order (reconciliation linked them, whatever their UID),
  else the ImagingStudy of the order's (or the report's) Study Instance UID;
* ``identifier``: the accession number (type ACSN) and the report number;
* ``effectiveDateTime`` OBR-7 (site zone), ``issued`` when radbridge stored the version;
* ``performer`` / ``resultsInterpreter``: OBR-32 (display and identifier; radbridge
  serves no Practitioner);
* ``conclusion`` the impression lines, ``presentedForm`` the whole text (text/plain, UTF-8; by URL
  as ``Binary/report-<report>-<version>-0`` past :data:`~engine.fhir.binary.INLINE_TEXT_BYTES`), then each
  document the version carried (OBX ED: a PDF ...) with its MIME type, by URL: a ``Binary`` served from the
  report tables (:mod:`engine.fhir.binary`), never inline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, select

from engine.domain.report_tables import report_versions, reports
from engine.domain.tables import orders, studies
from engine.fhir.binary import presented, report_text
from engine.fhir.instant import dicom_datetime, instant, search_range
from engine.fhir.model import Built, FhirSettings, Param, Version, identifier_system
from engine.fhir.resources.common import human_name, ids, reference, type_coding
from engine.fhir.resources.service_request import CODE_SYSTEMS
from engine.fhir.tables import fhir_refs, fhir_resources

__all__ = ["INCLUDES", "MANDATORY", "PARAMS", "REPORT_SYSTEM", "STATUSES", "TYPE", "build", "kinds"]

TYPE: str = "DiagnosticReport"
PARAMS: tuple[Param, ...] = (
    Param("identifier", "token", documentation="accession number (type ACSN) and report number"),
    Param("patient", "reference", ("Patient",)),
    Param("subject", "reference", ("Patient",)),
    Param("based-on", "reference", ("ServiceRequest",)),
    Param("imagingStudy", "reference", ("ImagingStudy",),
          documentation="the ImagingStudy reported on (radbridge; for _revinclude=DiagnosticReport:imagingStudy)"),
    Param("status", "token"),
    Param("category", "token", documentation="LOINC LP29684-5, v2-0074 RAD"),
    Param("code", "token"),
    Param("date", "date", documentation="effectiveDateTime (OBR-7)"),
    Param("issued", "date", documentation="when the current version was stored"),
)
#: Its elements of cardinality 1..1: kept by ``_elements`` (R4 3.1.1.5.9, mandatory elements SHOULD be returned).
MANDATORY: tuple[str, ...] = ("status", "code")
INCLUDES: tuple[str, ...] = ("DiagnosticReport:patient", "DiagnosticReport:subject", "DiagnosticReport:based-on",
                             "DiagnosticReport:imagingStudy")

#: The R4 value set diagnostic-report-status; anything else read from the site table is ``unknown``.
STATUSES = frozenset({"registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
                      "cancelled", "entered-in-error", "unknown"})
REPORT_SYSTEM = "urn:radbridge:report"
_STATUS_SYSTEM = "http://hl7.org/fhir/diagnostic-report-status"
_LOINC = "http://loinc.org"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_CATEGORY = {"coding": [{"system": _LOINC, "code": "LP29684-5", "display": "Radiology"},
                        {"system": _V2_0074, "code": "RAD", "display": "Radiology"}]}
_DEFAULT_CODE = {"coding": [{"system": _LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}]}


def _from_orders(conn: Connection, keys: set[str]) -> set[str]:
    """The reports of these orders (their patient, accession or study may have changed)."""
    return {str(r[0]) for r in conn.execute(select(reports.c.id).where(reports.c.order_pk.in_(ids(keys))))}


def _from_studies(conn: Connection, keys: set[str]) -> set[str]:
    """The reports of the orders these studies are linked to, and those whose stored resource names them (a
    study linked to its order, or to another one)."""
    rows = list(conn.execute(select(studies.c.study_instance_uid, studies.c.order_pk)
                             .where(studies.c.id.in_(ids(keys)))))
    found = _from_orders(conn, {str(r.order_pk) for r in rows if r.order_pk is not None})
    targets = [f"ImagingStudy/{r.study_instance_uid}" for r in rows]
    f, r = fhir_refs.c, fhir_resources.c
    found |= {row[0] for row in conn.execute(select(r.res_id).join(fhir_refs, f.resource_pk == r.id).where(
        r.res_type == TYPE, f.param == f"{TYPE}.imagingStudy", f.target.in_(targets)))}
    return found


def kinds() -> Mapping[str, Callable[[Connection, set[str]], set[str]]]:
    """Pending kinds that change DiagnosticReports: report rows, their orders, and the studies acquired."""
    return {"DiagnosticReport": lambda conn, keys: {str(pk) for pk in ids(keys)}, "ServiceRequest": _from_orders,
            "study": _from_studies}


def _code(order: Any, report: Any) -> dict[str, Any]:
    for value, scheme, meaning in ((order.procedure_code_value, order.procedure_coding_scheme,
                                    order.procedure_code_meaning),
                                   (report.procedure_code_value, report.procedure_coding_scheme,
                                    report.procedure_code_meaning)):
        if value:
            coding: dict[str, Any] = {"code": value}
            system = CODE_SYSTEMS.get(scheme.upper())
            coding = {"system": system, **coding} if system else coding
            if meaning:
                coding["display"] = meaning
            return {"coding": [coding], "text": meaning} if meaning else {"coding": [coding]}
    return _DEFAULT_CODE


def _interpreter(version: Any) -> list[dict[str, Any]]:
    name = human_name(version.interpreter) if version.interpreter else None
    who: dict[str, Any] = {}
    if version.interpreter_id:
        who["identifier"] = {"value": version.interpreter_id}
    if name is not None:
        who["display"] = " ".join([*name.get("given", []), name.get("family", "")]).strip()
    return [who] if who else []


def _identifiers(order: Any, report: Any, settings: FhirSettings) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [{"use": "official", "system": REPORT_SYSTEM, "value": str(report.id)}]
    accession = order.accession_number or report.accession_number
    if accession:
        system = identifier_system(settings, order.issuer_of_accession_number, settings.accession_system)
        found.insert(0, {"type": type_coding("ACSN", "Accession ID"), "system": system, "value": accession})
    return found


def _body(order: Any, report: Any, version: Any, settings: FhirSettings, acquired: list[str]) -> Built:
    """The resource as of ``version`` (a report_versions row), with its index entries."""
    status = version.status if version.status in STATUSES else "unknown"
    body: dict[str, Any] = {"resourceType": TYPE, "id": str(report.id),
                            "identifier": _identifiers(order, report, settings),
                            "basedOn": [reference("ServiceRequest", order.id)], "status": status,
                            "category": [_CATEGORY], "code": _code(order, report),
                            "subject": reference("Patient", order.patient_pk)}
    built = Built(TYPE, str(report.id), body, version_id=int(version.version))
    effective = dicom_datetime(version.observation_datetime[:8], version.observation_datetime[8:],
                               settings.site_zone)
    if effective is not None:
        body["effectiveDateTime"] = effective[0]
        built.dates.append(("date", *effective[1]))
    body["issued"] = instant(version.issued)
    built.dates.append(("issued", *search_range(body["issued"], settings.site_zone)))
    interpreter = _interpreter(version)
    if interpreter:
        body["performer"] = interpreter
        body["resultsInterpreter"] = interpreter
    uids = acquired or [uid for uid in (order.study_instance_uid or report.study_instance_uid,) if uid]
    if uids:
        body["imagingStudy"] = [reference("ImagingStudy", uid) for uid in uids]
        built.refs += [("imagingStudy", f"ImagingStudy/{uid}") for uid in uids]
    if version.conclusion.strip():
        body["conclusion"] = version.conclusion
    forms = [report_text(report.id, int(version.version), version.text) | {"creation": body["issued"]}
             ] if version.text.strip() else []
    forms += [form | {"creation": body["issued"]} for form in presented(report.id, int(version.version),
                                                                          version.attachments)]
    if forms:
        body["presentedForm"] = forms
    _index(built, body)
    return built


def _index(built: Built, body: dict[str, Any]) -> None:
    subject = body["subject"]["reference"]
    built.refs += [("patient", subject), ("subject", subject), ("based-on", body["basedOn"][0]["reference"])]
    built.tokens += [("identifier", i["system"], i["value"]) for i in body["identifier"]]
    built.tokens += [("status", _STATUS_SYSTEM, body["status"])]
    built.tokens += [("category", c["system"], c["code"]) for c in _CATEGORY["coding"]]
    built.tokens += [("code", c.get("system", ""), c["code"]) for c in body["code"]["coding"]]


def _rows(conn: Connection, pks: list[int]) -> tuple[dict[int, Any], dict[int, Any], dict[int, list[Any]]]:
    """(attached reports, their orders, their versions oldest first), each by pk."""
    found = {int(r.id): r for r in conn.execute(select(reports).where(reports.c.id.in_(pks),
                                                                        reports.c.order_pk.is_not(None)))}
    o = orders.c
    order_rows = {int(r.id): r for r in conn.execute(
        select(o.id, o.patient_pk, o.accession_number, o.issuer_of_accession_number, o.study_instance_uid,
               o.procedure_code_value, o.procedure_coding_scheme, o.procedure_code_meaning)
        .where(o.id.in_({int(r.order_pk) for r in found.values()})))}
    versions: dict[int, list[Any]] = {}
    for row in conn.execute(select(report_versions).where(report_versions.c.report_pk.in_(list(found)))
                            .order_by(report_versions.c.report_pk, report_versions.c.version)):
        versions.setdefault(int(row.report_pk), []).append(row)
    return found, order_rows, versions


def build(conn: Connection, keys: set[str], settings: FhirSettings) -> dict[str, Built | None]:
    """The DiagnosticReports with these ids, every version (None for an id with no attached report)."""
    built: dict[str, Built | None] = dict.fromkeys(keys)
    found, order_rows, versions = _rows(conn, ids(keys))
    acquired: dict[int, list[str]] = {}
    for row in conn.execute(select(studies.c.order_pk, studies.c.study_instance_uid)
                            .where(studies.c.order_pk.in_(list(order_rows))).order_by(studies.c.id)):
        acquired.setdefault(int(row.order_pk), []).append(row.study_instance_uid)
    for pk, report in found.items():
        order, history = order_rows.get(int(report.order_pk)), versions.get(pk, [])
        if order is None or not history:
            continue
        uids = acquired.get(int(order.id), [])
        current = _body(order, report, history[-1], settings, uids)
        current.earlier = tuple(Version(int(v.version), instant(v.issued),
                                        _body(order, report, v, settings, uids).body) for v in history[:-1])
        built[str(pk)] = current
    return built

