"""Patients: ADT upsert, merge (A40), change of identifier (A47), A10-A13 (IHE RAD-1, RAD-12).

Identity is PatientID + issuer (reference section 7). A patient merged into
another keeps its row with status ``MERGED`` and ``merged_into_id``; its
orders (and with them worklist steps), MPPS and studies move to the survivor. Later HL7
for a merged id follows :class:`PatientPolicy` (reject with AE 204 by default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from engine.domain.identity import resolve_identity, resolved_merge
from engine.domain.records import MergeRecord, OtherPatientId, PatientRecord
from engine.domain.studies import move_studies
from engine.domain.tables import (
    mpps,
    orders,
    patient_merges,
    patient_other_ids,
    patients,
    procedure_steps,
)
from engine.domain.visits import VISIT_EVENTS, apply_visit
from engine.errors import ErrorLocation, HL7ApplicationError
from engine.store.fast import FastInsert, FastStatement, first_row

__all__ = [
    "IMPLEMENTED_EVENTS",
    "PatientPolicy",
    "apply_patient_event",
    "change_identifier",
    "demographic_values",
    "ensure_patient",
    "find_patient",
    "merge_patient",
    "resolve_identity",
    "set_arrival",
]

_PID3 = ErrorLocation("PID", 1, 3)
_MRG1 = ErrorLocation("MRG", 1, 1)
_DEMOGRAPHICS = ("patient_name", "birth_date", "sex", "admission_id", "referring_physician_name")


@dataclass(frozen=True, slots=True)
class PatientPolicy:
    """``patients:`` settings as the domain uses them."""

    trusted_issuers: tuple[str, ...] = ()
    follow_merged: bool = False


# Run on every order and ADT message: compiled once, executed on the raw cursor (engine.store.fast).
_STORED = (*(patients.c[k] for k in _DEMOGRAPHICS), patients.c.cleared)
_FIND = FastStatement(
    select(patients.c.id, patients.c.patient_id, patients.c.issuer, patients.c.status, patients.c.merged_into_id,
           *_STORED)
    .where(patients.c.patient_id == bindparam("patient_id"), patients.c.issuer == bindparam("issuer"))
)  # fmt: skip
_INSERT = FastInsert(patients)


def find_patient(conn: Connection, patient_id: str, issuer: str) -> Any:
    """The patient row (id, identity, status, merged_into_id, demographics, cleared) for an identity, or None."""
    return first_row(_FIND, conn, {"patient_id": patient_id, "issuer": issuer})


def _live(conn: Connection, row: Any, policy: PatientPolicy, location: ErrorLocation) -> int:
    """The pk to apply HL7 to: the row itself, or its survivor when merges are followed."""
    seen = 0
    while row.status == "MERGED":
        if not policy.follow_merged:
            raise HL7ApplicationError(204, f"patient {row.patient_id} was merged", location)
        row = conn.execute(select(patients).where(patients.c.id == row.merged_into_id)).one()
        seen += 1
        if seen > 32:
            raise HL7ApplicationError(207, "merge chain too long", location)
    return int(row.id)


_REPLACED = FastStatement(
    select(patient_merges.c.survivor_pk)
    .where(patient_merges.c.kind == "change_id", patient_merges.c.prior_patient_id == bindparam("patient_id"),
           patient_merges.c.prior_issuer == bindparam("issuer"))
    .order_by(patient_merges.c.id.desc())
    .limit(1)
)  # fmt: skip


def _replaced(
    conn: Connection, patient_id: str, issuer: str, policy: PatientPolicy, location: ErrorLocation = _PID3
) -> int | None:
    """For an identity no patient holds: the patient an A47 gave a new id, per the merged-id policy.

    None when the identity was never replaced (a new patient). With the default
    policy the old id is retired like a merged one: AE 204 at PID-3.
    """
    row = _REPLACED.execute(conn, {"patient_id": patient_id, "issuer": issuer}).fetchone()
    if row is None:
        return None
    if not policy.follow_merged:
        raise HL7ApplicationError(204, f"patient {patient_id} was replaced by another identifier (A47)", location)
    renamed = conn.execute(select(patients).where(patients.c.id == row[0])).one()
    return _live(conn, renamed, policy, location)


def _create(conn: Connection, patient_id: str, issuer: str, now: datetime, **values: str) -> int:
    row = {"patient_id": patient_id, "issuer": issuer, "status": "ACTIVE", "cleared": "", "created_at": now,
           "updated_at": now}
    return _INSERT.execute(conn, {**row, **values})


def existing_patient(conn: Connection, patient_id: str, issuer: str, policy: PatientPolicy) -> int | None:
    """The live pk of the patient an identity names (following merges and A47 renames), None if unknown."""
    row = find_patient(conn, patient_id, issuer)
    if row is None:
        return _replaced(conn, patient_id, issuer, policy)
    return _live(conn, row, policy, _PID3)


def ensure_patient(
    conn: Connection, patient_id: str, issuer: str, policy: PatientPolicy, now: datetime
) -> int:
    """The pk of the patient for an order, created (without demographics) if unknown."""
    row = find_patient(conn, patient_id, issuer)
    if row is None:
        return _replaced(conn, patient_id, issuer, policy) or _create(conn, patient_id, issuer, now)
    return _live(conn, row, policy, _PID3)


def _store_other_ids(conn: Connection, pk: int, others: Sequence[OtherPatientId]) -> None:
    if not others:
        return
    existing = {
        (r.patient_id, r.issuer)
        for r in conn.execute(select(patient_other_ids).where(patient_other_ids.c.patient_pk == pk))
    }
    for other in others:
        if (other.patient_id, other.issuer) not in existing:
            conn.execute(
                insert(patient_other_ids).values(
                    patient_pk=pk,
                    patient_id=other.patient_id,
                    issuer=other.issuer,
                    type_of_id=other.type_of_id,
                )
            )


def demographic_values(record: PatientRecord) -> dict[str, str]:
    """The demographics an upsert writes: those the record gives, and "" for those it clears.

    An empty field never blanks a stored value; one sent as the HL7 null ``""`` does (HL7 v2.5.1
    2.5.3, the record's ``cleared``). Identifiers are never cleared: a null PID-3.1 is AE 101
    (the mapping's ``required``), a null issuer reads as no issuer.
    """
    values = {k: getattr(record, k) for k in _DEMOGRAPHICS if getattr(record, k)}
    for name in record.cleared:
        if name in _DEMOGRAPHICS and name not in values:
            values[name] = ""
    return values


def upsert_patient(
    conn: Connection, record: PatientRecord, policy: PatientPolicy, now: datetime,
    cleared: list[str] | None = None,
) -> int:
    """Create or update the patient (A01/A04/A05/A08/A31 and order PIDs); return its pk.

    Only fields the record gives or clears are written (:func:`demographic_values`); the
    ``cleared`` column remembers which were deleted (engine.domain.reconcile blanks them in
    the images). The names of stored values the record blanked are appended to ``cleared``.
    """
    patient_id, issuer, others = resolve_identity(record, policy.trusted_issuers)
    values: dict[str, str] = demographic_values(record)
    row = find_patient(conn, patient_id, issuer)
    replaced = _replaced(conn, patient_id, issuer, policy) if row is None else None
    if row is None and replaced is None:
        pk = _create(conn, patient_id, issuer, now, **values, cleared=_deleted("", values))
    else:
        pk = replaced or _live(conn, row, policy, _PID3)
        if values:
            stored = row if row is not None and pk == row.id else conn.execute(
                select(*_STORED).where(patients.c.id == pk)).one()  # a merged or renamed patient's survivor
            values["cleared"] = _deleted(stored.cleared, values)
            if any(getattr(stored, k) != v for k, v in values.items()):
                if cleared is not None:
                    cleared.extend(k for k in _DEMOGRAPHICS if values.get(k) == "" and getattr(stored, k))
                conn.execute(update(patients).where(patients.c.id == pk).values(updated_at=now, **values))
    _store_other_ids(conn, pk, others)
    return pk


def _deleted(before: str, values: dict[str, str]) -> str:
    """The ``cleared`` column after writing ``values``: deleted ones added, given ones removed."""
    names = set(before.split())
    names.difference_update(k for k, v in values.items() if v)
    names.update(k for k, v in values.items() if not v)
    return " ".join(k for k in _DEMOGRAPHICS if k in names)


def _steps_of(pk: int) -> Any:
    return select(orders.c.id).where(orders.c.patient_pk == pk).scalar_subquery()


def set_arrival(conn: Connection, pk: int, arrived: bool, now: datetime) -> int:
    """A10 marks the patient's SCHEDULED steps ARRIVED; A11 (undo) turns ARRIVED back."""
    old, new = ("SCHEDULED", "ARRIVED") if arrived else ("ARRIVED", "SCHEDULED")
    stmt = (
        update(procedure_steps)
        .where(procedure_steps.c.order_pk.in_(_steps_of(pk)), procedure_steps.c.status == old)
        .values(status=new, updated_at=now)
    )
    return int(conn.execute(stmt).rowcount or 0)


def _cancel_admit(conn: Connection, pk: int, record: PatientRecord, now: datetime) -> None:
    """A11 (HL7 v2.5.1 3.3.11): the admission or registration did not happen.

    The visit (class, location, status) and the admission id are cleared, and
    ARRIVED steps go back to SCHEDULED.
    """
    apply_visit(conn, pk, record, now)
    stmt = update(patients).where(patients.c.id == pk)
    if record.admission_id:
        stmt = stmt.where(patients.c.admission_id == record.admission_id)
    conn.execute(stmt.values(admission_id="", updated_at=now))
    set_arrival(conn, pk, False, now)


def _arrive(conn: Connection, pk: int, record: PatientRecord, now: datetime) -> None:
    """A10 patient arriving: the patient's scheduled steps become ARRIVED (and PV1-3 is current)."""
    apply_visit(conn, pk, record, now)
    set_arrival(conn, pk, True, now)


_EventAction = Callable[[Connection, int, PatientRecord, datetime], None]

#: Trigger event → what follows the demographic upsert (HL7 v2.5.1 3.3): the visit
#: (engine.domain.visits: A01-A05, A08, A31, A12, A13), arrival (A10) and its undo (A11).
EVENT_ACTIONS: dict[str, _EventAction] = {
    **dict.fromkeys(VISIT_EVENTS, apply_visit),
    "A10": _arrive,
    "A11": _cancel_admit,
}


#: ADT trigger events the patients handler implements: a demographic upsert alone (A01, A04,
#: A05, A08, A28, A31), with its visit or arrival action, or a merge (A40 and the events it
#: replaced: A18, A34, A36, A39) / change of id. "" is an order's PID. Any other event (A23 delete
#: visit, A29 delete person ...) is refused with AR 201 rather than acknowledged as if done,
#: should a mapping be edited to accept it.
IMPLEMENTED_EVENTS = frozenset({"", "A01", "A04", "A05", "A08", "A28", "A31", "A18", "A34", "A36", "A39", "A40", "A47",
                                *EVENT_ACTIONS})


def apply_patient_event(
    conn: Connection, record: PatientRecord, policy: PatientPolicy, now: datetime,
    cleared: list[str] | None = None,
) -> int:
    """Apply one ADT patient record: upsert, then the event's own action (A10, A11).

    ``cleared`` (when given) receives the names of stored demographics the record blanked.
    """
    pk = upsert_patient(conn, record, policy, now, cleared)
    action = EVENT_ACTIONS.get(record.event)
    if action is not None:
        action(conn, pk, record, now)
    return pk


def _record_link(conn: Connection, kind: str, prior: Any, survivor_pk: int, now: datetime) -> None:
    conn.execute(
        insert(patient_merges).values(
            kind=kind,
            prior_pk=prior.id,
            survivor_pk=survivor_pk,
            prior_patient_id=prior.patient_id,
            prior_issuer=prior.issuer,
            created_at=now,
        )
    )


def merge_patient(
    conn: Connection, record: MergeRecord, policy: PatientPolicy, now: datetime
) -> int:
    """A40: move orders (with their steps), MPPS and studies of the prior to the survivor.

    The prior stays as MERGED with ``merged_into_id``; the channel's transaction
    makes every PID/MRG pair of one message apply together or not at all. Survivor and
    prior are each chosen among their repetitions by ``trusted_issuers`` (engine.domain.identity).
    """
    record = resolved_merge(record, policy.trusted_issuers)
    survivor_key = (record.patient_id, record.issuer)
    if survivor_key == (record.prior_patient_id, record.prior_issuer):
        raise HL7ApplicationError(205, "a patient cannot be merged into itself", _MRG1)
    survivor_pk = ensure_patient(conn, *survivor_key, policy, now)
    prior = find_patient(conn, record.prior_patient_id, record.prior_issuer)
    if prior is None:  # an id an A47 retired names the renamed patient (or is refused)
        pk = _replaced(conn, record.prior_patient_id, record.prior_issuer, policy, _MRG1)
        if pk == survivor_pk:
            return survivor_pk  # the A47 already made the retired id this patient's: nothing to move
        if pk is None:
            pk = _create(conn, record.prior_patient_id, record.prior_issuer, now)
        prior = conn.execute(select(patients).where(patients.c.id == pk)).one()
    elif prior.status == "MERGED" or prior.id == survivor_pk:
        raise HL7ApplicationError(204, f"patient {prior.patient_id} is already merged", _MRG1)
    conn.execute(
        update(orders).where(orders.c.patient_pk == prior.id).values(patient_pk=survivor_pk)
    )
    conn.execute(update(mpps).where(mpps.c.patient_pk == prior.id).values(patient_pk=survivor_pk))
    move_studies(conn, int(prior.id), survivor_pk)
    conn.execute(
        update(patients)
        .where(patients.c.id == prior.id)
        .values(status="MERGED", merged_into_id=survivor_pk, updated_at=now)
    )
    _record_link(conn, "merge", prior, survivor_pk, now)
    return survivor_pk


def change_identifier(conn: Connection, record: MergeRecord, policy: PatientPolicy, now: datetime) -> int:
    """A47: the prior identifier becomes the new one on the same patient (everything follows).

    A prior radbridge has never seen is not an error (dcm4chee does the same, and A40 treats
    an unknown prior alike): the patient is created or found under the new identifier and
    the old one is recorded as replaced, so later HL7 for it follows the merged-id policy.
    Both ids are chosen among their repetitions by ``trusted_issuers`` (engine.domain.identity).
    """
    record = resolved_merge(record, policy.trusted_issuers)
    prior = find_patient(conn, record.prior_patient_id, record.prior_issuer)
    current = find_patient(conn, record.patient_id, record.issuer)
    if prior is None:
        pk = _live(conn, current, policy, _PID3) if current is not None else ensure_patient(
            conn, record.patient_id, record.issuer, policy, now)
        retired = SimpleNamespace(id=pk, patient_id=record.prior_patient_id, issuer=record.prior_issuer)
        _record_link(conn, "change_id", retired, pk, now)
        return pk
    if current is not None:
        raise HL7ApplicationError(205, f"patient {record.patient_id} already exists", _PID3)
    conn.execute(
        update(patients)
        .where(patients.c.id == prior.id)
        .values(patient_id=record.patient_id, issuer=record.issuer, updated_at=now)
    )
    conn.execute(
        delete(patient_other_ids).where(
            patient_other_ids.c.patient_pk == prior.id,
            patient_other_ids.c.patient_id == record.patient_id,
        )
    )
    _record_link(conn, "change_id", prior, int(prior.id), now)
    return int(prior.id)
