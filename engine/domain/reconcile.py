"""Reconciliation in the database: which order an image belongs to, and linking its study to it.

Matching (reference section 6): the Scheduled Procedure Step IDs of the image's
RequestAttributesSequence, then its Study Instance UID (an order's, or a stored study's
that is already linked to an order), then its Accession Number together with its Patient ID
(which resolves through A40 merges and A47 id changes to the surviving patient,
:func:`~engine.domain.studies.resolve_dicom_patient`). Only steps SCHEDULED, ARRIVED or
STARTED are candidates, and steps COMPLETED no longer ago than the configured window.
A key that names more than one order is not a match (which one is unknown): the image
stays unscheduled.

The order, its step and its patient become the input of the order-to-image
mapping (:func:`order_input`) in the record shapes of :mod:`engine.domain.records`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, and_, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import NoResultFound

from engine.domain.instances import FIELDS
from engine.domain.reconcile_tables import correction_adts, reconcile_requests
from engine.domain.studies import resolve_dicom_patient
from engine.domain.tables import orders, patient_other_ids, patients, procedure_steps, studies
from engine.mapping.null import NULL
from engine.reconcile.keys import MatchKeys
from engine.store.fast import FastStatement, all_rows, first_row

__all__ = [
    "OPEN_STEPS",
    "MatchPolicy",
    "OrderMatch",
    "PatientMismatchPolicy",
    "Request",
    "find_linked_study",
    "find_order",
    "input_from_rows",
    "link_study",
    "order_input",
    "order_rows",
    "patient_conflict",
    "patient_input",
    "request_for_orders",
    "request_for_patient",
    "request_reconciliation",
    "study_patient",
]

#: Step statuses an image may still belong to, whatever their age (PS3.4 K, reference section 6).
OPEN_STEPS = ("SCHEDULED", "ARRIVED", "STARTED")
PatientMismatchPolicy = Literal["reject", "accept"]


@dataclass(frozen=True, slots=True)
class MatchPolicy:
    """How far back a COMPLETED step is still a candidate."""

    completed_window: timedelta = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class OrderMatch:
    """The order (and step, and patient) an image belongs to; ``matched_by`` names the key used."""

    order_pk: int
    step_pk: int
    patient_pk: int
    matched_by: str


def _candidates(policy: MatchPolicy, now: datetime) -> Any:
    s, o = procedure_steps.c, orders.c
    fresh = and_(s.status == "COMPLETED", s.updated_at >= now - policy.completed_window)
    return (select(s.id, s.order_pk, o.patient_pk, s.modality).join(orders, s.order_pk == o.id)
            .where(or_(s.status.in_(OPEN_STEPS), fresh)).order_by(s.id))


def _fast_candidates(criterion: Any) -> FastStatement:
    """:func:`_candidates` narrowed by ``criterion``, compiled once (``since``: now - the window).

    The receive path looks up every image's order: on the driver's cursor these lookups cost
    a fraction of building and compiling the Core statement each time.
    """
    s, o = procedure_steps.c, orders.c
    fresh = and_(s.status == "COMPLETED", s.updated_at >= bindparam("since", type_=s.updated_at.type))
    return FastStatement(select(s.id, s.order_pk, o.patient_pk, s.modality).join(orders, s.order_pk == o.id)
                         .where(or_(*(s.status == status for status in OPEN_STEPS), fresh), criterion)
                         .order_by(s.id))


_BY_STUDY_UID = _fast_candidates(orders.c.study_instance_uid == bindparam("study_uid"))
_BY_ACCESSION = _fast_candidates(and_(orders.c.accession_number == bindparam("accession"),
                                      orders.c.patient_pk == bindparam("patient_pk")))
_LINKED_STUDY = FastStatement(
    select(studies.c.order_pk, studies.c.step_pk, orders.c.patient_pk).join(orders, orders.c.id == studies.c.order_pk)
    .where(studies.c.study_instance_uid == bindparam("uid"), studies.c.step_pk.is_not(None))
)
_STUDY_PATIENT = FastStatement(
    select(studies.c.patient_pk, studies.c.patient_id, studies.c.issuer_of_patient_id, studies.c.number_of_instances)
    .where(studies.c.study_instance_uid == bindparam("uid"))
)


def _single(rows: Sequence[Any], by: str, modality: str = "") -> OrderMatch | None:
    """The match when every row is the same order, else None (ambiguous or none).

    The step is the first of the image's ``modality`` among them (an order with an IPC per step:
    CT and MR steps of one procedure share its Study Instance UID and accession), else the first.
    """
    if not rows or len({int(r.order_pk) for r in rows}) != 1:
        return None
    row = next((r for r in rows if modality and r.modality == modality), rows[0])
    return OrderMatch(int(row.order_pk), int(row.id), int(row.patient_pk), by)


def find_order(conn: Connection, keys: MatchKeys, now: datetime, policy: MatchPolicy) -> OrderMatch | None:
    """The order ``keys`` name, by SPS ID, then Study Instance UID, then accession + patient."""
    since = now - policy.completed_window
    if keys.sps_ids:
        rows = conn.execute(_candidates(policy, now).where(procedure_steps.c.sps_id.in_(keys.sps_ids))).all()
        found = _single(rows, "sps_id")
        if found is not None:
            return found
    if keys.study_instance_uid:
        rows = all_rows(_BY_STUDY_UID, conn, {"since": since, "study_uid": keys.study_instance_uid})
        found = _single(rows, "study_instance_uid", keys.modality)
        if found is not None:
            return found
    if keys.study_instance_uid:
        found = find_linked_study(conn, keys.study_instance_uid)
        if found is not None:
            return found
    if keys.accession_number and keys.patient_id:
        patient_pk = resolve_dicom_patient(conn, keys.patient_id, keys.issuer_of_patient_id)
        if patient_pk is not None:
            params = {"since": since, "accession": keys.accession_number, "patient_pk": patient_pk}
            return _single(all_rows(_BY_ACCESSION, conn, params), "accession_number", keys.modality)
    return None


def find_linked_study(conn: Connection, study_instance_uid: str) -> OrderMatch | None:
    """The order a stored study was already linked to (by an earlier image, a late order or an operator):
    later images of the study follow it, whatever its step's status now."""
    row = first_row(_LINKED_STUDY, conn, {"uid": study_instance_uid})
    if row is None:
        return None
    return OrderMatch(int(row.order_pk), int(row.step_pk), int(row.patient_pk), "study_link")


def _code(value: str, scheme: str, meaning: str) -> dict[str, str] | None:
    if not (value or scheme or meaning):
        return None
    return {"code_value": value, "coding_scheme_designator": scheme, "code_meaning": meaning}


def _labelled(table: Any, prefix: str, names: str) -> list[Any]:
    return [table.c[name].label(f"{prefix}{name}") for name in names.split()]


#: The order, its step and its patient, with one row per other id of the patient (none: one row, NULLs):
#: one statement compiled once (the mapping input of every matched image; through Core its four
#: statements cost ~1 ms an image).
_ORDER_INPUT = FastStatement(
    select(*_labelled(orders, "o_", "order_control order_status placer_order_number filler_order_number "
                      "accession_number issuer_of_accession_number requested_procedure_id study_instance_uid "
                      "priority requested_procedure_description procedure_code_value procedure_coding_scheme "
                      "procedure_code_meaning requesting_physician referring_physician_name admission_id cleared"),
           *_labelled(procedure_steps, "s_", "sps_id modality description protocol_code_value "
                      "protocol_coding_scheme protocol_code_meaning"),
           *_labelled(patients, "p_", "patient_id issuer patient_name birth_date sex admission_id "
                      "referring_physician_name cleared"),
           *_labelled(patient_other_ids, "x_", "id patient_id issuer type_of_id"))
    .select_from(orders.join(patients, patients.c.id == orders.c.patient_pk)
                 .outerjoin(patient_other_ids, patient_other_ids.c.patient_pk == patients.c.id))
    .join(procedure_steps, procedure_steps.c.id == bindparam("step_pk"))
    .where(orders.c.id == bindparam("order_pk"))
    .order_by(patient_other_ids.c.id)
)


def order_rows(conn: Connection, match: OrderMatch) -> tuple[Any, ...]:
    """The stored rows :func:`order_input` is built from (hashable: equal rows give an equal input)."""
    rows = all_rows(_ORDER_INPUT, conn, {"order_pk": match.order_pk, "step_pk": match.step_pk})
    if not rows:
        raise NoResultFound(f"order {match.order_pk} with step {match.step_pk} is gone")  # as Core's .one()
    return tuple(rows)


def order_input(conn: Connection, match: OrderMatch) -> dict[str, Any]:
    """``{"order": ..., "patient": ...}`` for the order-to-image mapping, from the stored rows.

    The patient is the order's as stored now (a merge moved the order to the survivor),
    so the image gets the surviving identity.
    """
    return input_from_rows(order_rows(conn, match))


def input_from_rows(rows: Sequence[Any]) -> dict[str, Any]:
    """:func:`order_input` of the rows :func:`order_rows` read."""
    r = rows[0]
    order = {
        "record": "order", "order_control": r.o_order_control or "NW", "order_status": r.o_order_status,
        "patient_id": r.p_patient_id, "issuer": r.p_issuer, "placer_order_number": r.o_placer_order_number,
        "filler_order_number": r.o_filler_order_number, "accession_number": r.o_accession_number,
        "issuer_of_accession_number": r.o_issuer_of_accession_number,
        "requested_procedure_id": r.o_requested_procedure_id, "study_instance_uid": r.o_study_instance_uid,
        "scheduled_procedure_step_id": r.s_sps_id, "modality": r.s_modality, "priority": r.o_priority,
        "requested_procedure_description": r.o_requested_procedure_description,
        "requested_procedure_code": _code(r.o_procedure_code_value, r.o_procedure_coding_scheme,
                                          r.o_procedure_code_meaning),
        "scheduled_procedure_step_description": r.s_description,
        "scheduled_protocol_code": _code(r.s_protocol_code_value, r.s_protocol_coding_scheme,
                                         r.s_protocol_code_meaning),
        "requesting_physician": r.o_requesting_physician, "referring_physician_name": r.o_referring_physician_name,
        "admission_id": r.o_admission_id,
    }  # fmt: skip
    patient = {
        "record": "patient", "patient_id": r.p_patient_id, "issuer": r.p_issuer, "patient_name": r.p_patient_name,
        "birth_date": r.p_birth_date, "sex": r.p_sex, "admission_id": r.p_admission_id,
        "referring_physician_name": r.p_referring_physician_name,
        "other_ids": [{"patient_id": x.x_patient_id, "issuer": x.x_issuer, "type_of_id": x.x_type_of_id}
                      for x in rows if x.x_id is not None],
    }  # fmt: skip
    return {"order": with_nulls(order, r.o_cleared), "patient": with_nulls(patient, r.p_cleared)}


def with_nulls(record: dict[str, Any], cleared: str) -> dict[str, Any]:
    """The record input with each value a message deleted (``patients.cleared``, ``orders.cleared``) as
    the mapping's NULL: the order-to-image mapping passes it on and the coercion blanks the image's value,
    where an empty value ("never given") leaves the modality's (engine.reconcile.coerce)."""
    for name in cleared.split():
        if name in record and not record[name]:
            record[name] = NULL
    return record


def patient_conflict(conn: Connection, keys: MatchKeys, match: OrderMatch | None) -> str | None:
    """Why an image may not join its (already stored) study under another patient, else None.

    No conflict when the image matched the order of the study's patient (it is coerced to
    that patient), when its Patient ID (+ issuer) is the study's, or when it resolves (A40
    merges, A47 id changes followed) to the study's patient. The image's id and issuer are compared as the
    study row holds them (cut to the index's lengths: a modality may write a Patient ID over LO's 64
    characters, the same in every image of the study); an issuer that either side lacks does not differ
    (an image without one joins a study stored with one, and the other way round: which image arrived
    first must not decide). An image whose Patient ID is absent or empty is no conflict either: it says
    nothing about the patient (:func:`study_patient` gives it the study's patient's identity).
    """
    st = first_row(_STUDY_PATIENT, conn, {"uid": keys.study_instance_uid})
    if st is None or not st.number_of_instances or not st.patient_id or not keys.patient_id:
        return None  # an image without a Patient ID names no other patient (as one without an issuer)
    patient_id = keys.patient_id[:FIELDS["patient_id"][1]]
    issuer = keys.issuer_of_patient_id[:FIELDS["issuer_of_patient_id"][1]]
    if patient_id == st.patient_id and (not issuer or not st.issuer_of_patient_id or issuer == st.issuer_of_patient_id):
        return None
    study_patient = st.patient_pk if st.patient_pk is not None else (match.patient_pk if match else None)
    if match is not None and match.patient_pk == study_patient:
        return None  # the study's own order: the image is coerced to the study's patient
    resolved = resolve_dicom_patient(conn, keys.patient_id, keys.issuer_of_patient_id)
    if resolved is not None and resolved == study_patient:
        return None
    return "the study's instances belong to another patient"


def study_patient(conn: Connection, study_instance_uid: str) -> int | None:
    """The patient of the stored study ``study_instance_uid`` (None: no such study, or one of an unknown
    patient)."""
    st = first_row(_STUDY_PATIENT, conn, {"uid": study_instance_uid})
    return int(st.patient_pk) if st is not None and st.patient_pk is not None and st.number_of_instances else None


def link_study(conn: Connection, study_pk: int, match: OrderMatch) -> None:
    """Link a study to its order and step (and the order's patient), in the caller's transaction."""
    accession = conn.execute(select(orders.c.accession_number).where(orders.c.id == match.order_pk)).scalar_one()
    conn.execute(update(studies).where(studies.c.id == study_pk).values(
        order_pk=match.order_pk, step_pk=match.step_pk, patient_pk=match.patient_pk, accession_number=accession))


def request_reconciliation(conn: Connection, order_pks: list[int], now: datetime) -> None:
    """Ask the background job to look for unscheduled studies of these orders (caller's transaction)."""
    for pk in dict.fromkeys(order_pks):
        conn.execute(insert(reconcile_requests).values(order_pk=pk, created_at=now, event_key=uuid.uuid4().hex))


@dataclass(frozen=True, slots=True)
class Request:
    """One pending ``reconcile_requests`` row: a late order, or a patient to correct.

    ``event_key`` names the correction event for good (idempotency keys derive from it);
    ``trigger`` is the ADT event that asked (A47, A40, A08 …), "" for an order.
    """

    id: int
    order_pk: int | None
    patient_pk: int | None
    event_key: str = ""
    trigger: str = ""


def take_requests(conn: Connection, limit: int = 50) -> list[Request]:
    """The oldest pending requests."""
    rr = reconcile_requests.c
    rows = conn.execute(select(rr.id, rr.order_pk, rr.patient_pk, rr.event_key, rr.trigger).order_by(rr.id)
                        .limit(limit))
    return [Request(int(r.id), r.order_pk, r.patient_pk, r.event_key or f"legacy{r.id}", r.trigger) for r in rows]


def request_for_patient(conn: Connection, patient_pk: int, now: datetime, trigger: str = "") -> int:
    """ADT hook (A08/A31, A40, A47: ``trigger``): when the patient has stored images, ask the job to
    correct them. Returns how many of the patient's studies hold images (0: nothing was asked)."""
    st = studies.c
    count = int(conn.execute(select(func.count()).where(st.patient_pk == patient_pk, st.number_of_instances > 0))
                .scalar_one())
    if count:
        conn.execute(insert(reconcile_requests).values(patient_pk=patient_pk, created_at=now,
                                                       event_key=uuid.uuid4().hex, trigger=trigger[:8]))
    return count


def patient_input(conn: Connection, patient_pk: int) -> dict[str, Any]:
    """The order-to-image mapping input for a study without an order: the patient alone (the order
    fields are empty, which the coercion reads as "the order does not say")."""
    p = conn.execute(select(patients).where(patients.c.id == patient_pk)).one()
    patient = {
        "record": "patient", "patient_id": p.patient_id, "issuer": p.issuer, "patient_name": p.patient_name,
        "birth_date": p.birth_date, "sex": p.sex, "referring_physician_name": p.referring_physician_name,
    }  # fmt: skip
    return {"order": {"record": "order", "order_control": "NW", "patient_id": p.patient_id, "issuer": p.issuer},
            "patient": with_nulls(patient, p.cleared)}


def finish_request(conn: Connection, request: Request) -> None:
    """Drop a handled request and the keys of the ADTs it queued (no run of it can follow)."""
    conn.execute(delete(reconcile_requests).where(reconcile_requests.c.id == request.id))
    conn.execute(delete(correction_adts).where(correction_adts.c.event_key == request.event_key))


#: Is any study unscheduled? Asked for every order that changes (the order path's hot loop), so it
#: runs on the driver's cursor: through Core it cost ~90 µs an order, and it began a SQLAlchemy
#: transaction that the inline commit then had to go through (engine.store.fast).
_ANY_UNSCHEDULED = FastStatement(select(exists().where(studies.c.order_pk.is_(None))))


def request_for_orders(conn: Connection, step_pks: Sequence[int], now: datetime, content: bool = False) -> None:
    """Order handler hook: ask the job to look at these steps' orders when it has work there.

    Work is an unscheduled study the order may own (a late order), or, when the message
    changed the order's content (``content``: NW resent with changes, XO), a stored study
    already linked to the order, whose images the job corrects (PIR). One insert at most
    per order, in the order message's transaction.
    """
    if not step_pks:
        return
    st = studies.c
    unscheduled = bool(_ANY_UNSCHEDULED.execute(conn, {}).fetchone()[0])
    if not (unscheduled or content):
        return
    order_pks = [int(r[0]) for r in conn.execute(
        select(procedure_steps.c.order_pk).where(procedure_steps.c.id.in_(step_pks)))]
    if not unscheduled and conn.execute(select(exists().where(
            st.order_pk.in_(order_pks), st.number_of_instances > 0))).scalar() is not True:
        return
    request_reconciliation(conn, order_pks, now)
