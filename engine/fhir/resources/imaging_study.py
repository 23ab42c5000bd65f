"""ImagingStudy (R4) for a Study Instance UID, from the order(s) that scheduled it and the study index.

The id is the Study Instance UID itself (a UID is a valid FHIR id: digits and dots,
at most 64), so the resource exists from the order on and keeps its id when MPPS
and C-STORE fill it in. Status (R4 ImagingStudy.status, reference "ImagingStudy"):

* ``available`` once at least one instance is known (MPPS references or stored instances);
* else ``cancelled`` when every order of the study is cancelled or discontinued;
* else ``registered``.

Series and instances come from ``series``/``instances``; ``numberOfSeries`` and
``numberOfInstances`` agree with the series listed. ``started`` is the study's date
and time (site zone) or, while only scheduled, the scheduled start.

A modality that makes its own Study Instance UID instead of the worklist's sends a
study that reconciliation links to the order (``studies.order_pk``) under another UID:
that acquired study is the order's ImagingStudy (``basedOn`` the order, its accession),
and the scheduled one is removed once none of its orders is still waiting for images
under it, so that the EHR never sees a study that will not come left ``registered``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, select

from engine.domain.instance_tables import instances
from engine.domain.tables import orders, procedure_steps, series, studies
from engine.fhir.instant import dicom_datetime
from engine.fhir.model import Built, FhirSettings, Param, identifier_system
from engine.fhir.resources.common import ids, reference, type_coding
from engine.fhir.resources.service_request import scheduled_start
from engine.fhir.tables import fhir_refs, fhir_resources

__all__ = ["DCM", "ENDPOINT_ID", "INCLUDES", "MANDATORY", "PARAMS", "TYPE", "build", "kinds"]

TYPE: str = "ImagingStudy"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENDPOINT_ID = "dicomweb"
PARAMS: tuple[Param, ...] = (
    Param("identifier", "token", documentation="Study Instance UID as urn:dicom:uid|urn:oid:<uid>; accession"),
    Param("patient", "reference", ("Patient",)),
    Param("subject", "reference", ("Patient",)),
    Param("started", "date"),
    Param("status", "token"),
    Param("modality", "token", documentation="modality of any series (DCM codes)"),
    Param("basedon", "reference", ("ServiceRequest",)),
    Param("endpoint", "reference", ("Endpoint",)),
    Param("series", "token", documentation="Series Instance UID"),
    Param("instance", "token", documentation="SOP Instance UID"),
    Param("dicom-class", "token", documentation="SOP Class UID"),
)
#: Its elements of cardinality 1..1: kept by ``_elements`` (R4 3.1.1.5.9, mandatory elements SHOULD be returned).
MANDATORY: tuple[str, ...] = ("status", "subject")
INCLUDES: tuple[str, ...] = ("ImagingStudy:patient", "ImagingStudy:subject", "ImagingStudy:basedon",
                             "ImagingStudy:endpoint")

_CANCELLED_STEPS = {"CANCELED", "DISCONTINUED"}
_STATUS_SYSTEM = "http://hl7.org/fhir/imagingstudy-status"


def _stored_refs(conn: Connection, param: str, res_ids: list[str]) -> set[str]:
    """The targets ``param`` of the stored ImagingStudies ``res_ids`` (what they said before this change)."""
    f, r = fhir_refs.c, fhir_resources.c
    return {row[0] for row in conn.execute(
        select(f.target).join(fhir_resources, f.resource_pk == r.id)
        .where(r.res_type == TYPE, r.res_id.in_(res_ids), f.param == f"{TYPE}.{param}"))}


def _from_studies(conn: Connection, keys: set[str]) -> set[str]:
    """These studies, and the scheduled studies of the orders they are linked to now or were before (their
    placeholder goes, or comes back when a study is linked to another order)."""
    rows = list(conn.execute(select(studies.c.study_instance_uid, studies.c.order_pk)
                             .where(studies.c.id.in_(ids(keys)))))
    uids = {r.study_instance_uid for r in rows}
    before = {target.removeprefix("ServiceRequest/") for target in _stored_refs(conn, "basedon", sorted(uids))}
    order_pks = {int(r.order_pk) for r in rows if r.order_pk is not None} | set(ids(before))
    scheduled = {r[0] for r in conn.execute(select(orders.c.study_instance_uid).where(orders.c.id.in_(order_pks)))}
    return (uids | scheduled) - {""}


def _from_orders(conn: Connection, keys: set[str]) -> set[str]:
    """The studies of these orders now (scheduled and acquired), and those whose stored resource still names
    them (a moved UID)."""
    pks = ids(keys)
    found = {r[0] for r in conn.execute(select(orders.c.study_instance_uid).where(orders.c.id.in_(pks)))}
    found |= {r[0] for r in conn.execute(select(studies.c.study_instance_uid).where(studies.c.order_pk.in_(pks)))}
    targets = [f"ServiceRequest/{pk}" for pk in pks]
    f = fhir_refs.c
    stored = conn.execute(select(fhir_resources.c.res_id).join(fhir_refs, f.resource_pk == fhir_resources.c.id)
                          .where(f.param == "ImagingStudy.basedon", f.target.in_(targets)))
    return (found | {r[0] for r in stored}) - {""}


def kinds() -> Mapping[str, Callable[[Connection, set[str]], set[str]]]:
    """Pending kinds that change ImagingStudies: study index rows, and orders."""
    return {"study": _from_studies, "ServiceRequest": _from_orders}


def _coding(modality: str) -> dict[str, str]:
    return {"system": DCM, "code": modality}


class _Rows:
    """Everything one batch of UIDs needs, read in a handful of queries."""

    def __init__(self, conn: Connection, uids: list[str]) -> None:
        t = studies.c
        self.studies = {r.study_instance_uid: r for r in conn.execute(select(
            t.id, t.study_instance_uid, t.patient_pk, t.patient_id, t.accession_number, t.study_date, t.study_time,
            t.study_description, t.order_pk).where(t.study_instance_uid.in_(uids)))}
        linked = {int(r.order_pk): uid for uid, r in self.studies.items() if r.order_pk is not None}
        self.orders: dict[str, list[Any]] = {}
        o = orders.c
        wanted = (o.id, o.patient_pk, o.study_instance_uid, o.accession_number, o.issuer_of_accession_number,
                  o.requested_procedure_description)
        for order in conn.execute(select(*wanted).where(o.study_instance_uid.in_(uids) | o.id.in_(linked))
                                  .order_by(o.id)):
            for uid in {order.study_instance_uid, linked.get(int(order.id), "")} & set(uids):
                self.orders.setdefault(uid, []).append(order)
        order_pks = [o.id for rows in self.orders.values() for o in rows]
        #: order pk -> the Study Instance UIDs of the studies reconciliation linked to it
        self.acquired: dict[int, set[str]] = {}
        for row in conn.execute(select(t.order_pk, t.study_instance_uid).where(t.order_pk.in_(order_pks))):
            self.acquired.setdefault(int(row.order_pk), set()).add(row.study_instance_uid)
        s = procedure_steps.c
        self.steps: dict[int, list[Any]] = {}
        for step in conn.execute(select(s.order_pk, s.status, s.modality, s.start_datetime)
                                 .where(s.order_pk.in_(order_pks)).order_by(s.id)):
            self.steps.setdefault(int(step.order_pk), []).append(step)
        study_pks = [r.id for r in self.studies.values()]
        self.series: dict[int, list[Any]] = {}
        e = series.c
        for item in conn.execute(select(e.id, e.study_pk, e.series_instance_uid, e.series_number, e.modality,
                                       e.series_description, e.number_of_instances, e.series_date)
                                .where(e.study_pk.in_(study_pks)).order_by(e.series_number, e.id)):
            self.series.setdefault(int(item.study_pk), []).append(item)
        i = instances.c
        self.instances: dict[int, list[Any]] = {}
        for instance in conn.execute(select(i.series_pk, i.sop_instance_uid, i.sop_class_uid, i.instance_number)
                                .where(i.study_pk.in_(study_pks)).order_by(i.instance_number, i.id)):
            self.instances.setdefault(int(instance.series_pk), []).append(instance)


def _status(study: Any, order_rows: list[Any], steps: list[Any], instance_count: int) -> str:
    if instance_count > 0:
        return "available"
    if order_rows and steps and all(step.status in _CANCELLED_STEPS for step in steps):
        return "cancelled"
    return "registered"


def _series(rows: _Rows, study: Any, fallback_modality: str, settings: FhirSettings) -> list[dict[str, Any]]:
    found = []
    for row in rows.series.get(int(study.id), []) if study is not None else []:
        item: dict[str, Any] = {"uid": row.series_instance_uid}
        if row.series_number is not None:
            item["number"] = int(row.series_number)
        item["modality"] = _coding(row.modality or fallback_modality or "OT")
        if row.series_description:
            item["description"] = row.series_description
        stored = rows.instances.get(int(row.id), [])
        item["numberOfInstances"] = max(int(row.number_of_instances), len(stored))
        if settings.dicomweb_base:
            item["endpoint"] = [reference("Endpoint", ENDPOINT_ID)]
        when = dicom_datetime(row.series_date, "", settings.site_zone)
        if when is not None:
            item["started"] = when[0]
        if stored:
            item["instance"] = [_instance(i) for i in stored]
        found.append(item)
    return found


def _instance(row: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"uid": row.sop_instance_uid,
                            "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{row.sop_class_uid}"}}
    if row.instance_number is not None:
        item["number"] = int(row.instance_number)
    return item


def _subject(study: Any, order_rows: list[Any]) -> dict[str, Any] | None:
    if study is not None and study.patient_pk is not None:
        return reference("Patient", study.patient_pk)
    if order_rows:
        return reference("Patient", order_rows[0].patient_pk)
    if study is not None and study.patient_id:
        return {"identifier": {"value": study.patient_id}}
    return None


def _started(study: Any, steps: list[Any], settings: FhirSettings) -> tuple[str, tuple[str, str]] | None:
    if study is not None and study.study_date:
        found = dicom_datetime(study.study_date, study.study_time, settings.site_zone)
        if found is not None:
            return found
    for step in steps:
        found = scheduled_start(step.start_datetime, settings)
        if found is not None:
            return found
    return None


def _identifiers(uid: str, study: Any, order_rows: list[Any], settings: FhirSettings) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [{"use": "official", "system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}]
    accessions = {(o.accession_number, o.issuer_of_accession_number) for o in order_rows if o.accession_number}
    if not accessions and study is not None and study.accession_number:
        accessions = {(study.accession_number, "")}
    for number, issuer in sorted(accessions):
        found.append({"type": type_coding("ACSN", "Accession ID"),
                      "system": identifier_system(settings, issuer, settings.accession_system), "value": number})
    return found


def _build_one(uid: str, rows: _Rows, settings: FhirSettings) -> Built | None:
    study, order_rows = rows.studies.get(uid), rows.orders.get(uid, [])
    if study is None:  # scheduled only: for the orders still waiting for images under this UID
        order_rows = [o for o in order_rows if not rows.acquired.get(int(o.id), set()) - {uid}]
    steps = [step for o in order_rows for step in rows.steps.get(int(o.id), [])]
    subject = _subject(study, order_rows)
    if subject is None or (study is None and not order_rows):
        return None  # nothing known, or nobody to attach it to (R4: subject 1..1)
    step_modality = next((s.modality for s in steps if s.modality), "")
    series_items = _series(rows, study, step_modality, settings)
    count = sum(item["numberOfInstances"] for item in series_items)
    status = _status(study, order_rows, steps, count)
    body: dict[str, Any] = {"resourceType": TYPE, "id": uid,
                            "identifier": _identifiers(uid, study, order_rows, settings), "status": status}
    built = Built(TYPE, uid, body)
    modalities = sorted({s["modality"]["code"] for s in series_items} or ({step_modality} - {""}))
    if modalities:
        body["modality"] = [_coding(m) for m in modalities]
    body["subject"] = subject
    started = _started(study, steps, settings)
    if started is not None:
        body["started"] = started[0]
        built.dates.append(("started", *started[1]))
    if order_rows:
        body["basedOn"] = [reference("ServiceRequest", o.id) for o in order_rows]
    if settings.dicomweb_base:
        body["endpoint"] = [reference("Endpoint", ENDPOINT_ID)]
    if series_items:
        body["numberOfSeries"] = len(series_items)
        body["numberOfInstances"] = count
    description = (study.study_description if study is not None else "") or next(
        (o.requested_procedure_description for o in order_rows if o.requested_procedure_description), "")
    if description:
        body["description"] = description
    if series_items:
        body["series"] = series_items
    _index(built, body)
    return built


def _index(built: Built, body: dict[str, Any]) -> None:
    built.tokens += [("identifier", i["system"], i["value"]) for i in body["identifier"]]
    built.tokens.append(("status", _STATUS_SYSTEM, body["status"]))
    built.tokens += [("modality", DCM, m["code"]) for m in body.get("modality", [])]
    for item in body.get("series", []):
        built.tokens.append(("series", "", item["uid"]))
        for instance in item.get("instance", []):
            built.tokens.append(("instance", "", instance["uid"]))
            built.tokens.append(("dicom-class", "urn:ietf:rfc:3986", instance["sopClass"]["code"]))
    built.tokens = list(dict.fromkeys(built.tokens))
    if "reference" in body["subject"]:
        built.refs += [("patient", body["subject"]["reference"]), ("subject", body["subject"]["reference"])]
    built.refs += [("basedon", r["reference"]) for r in body.get("basedOn", [])]
    built.refs += [("endpoint", r["reference"]) for r in body.get("endpoint", [])]


def build(conn: Connection, keys: set[str], settings: FhirSettings) -> dict[str, Built | None]:
    """The ImagingStudies with these Study Instance UIDs (None when nothing is known of one)."""
    uids = sorted(keys)
    rows = _Rows(conn, uids)
    return {uid: _build_one(uid, rows, settings) for uid in uids}
