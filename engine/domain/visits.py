"""The patient's current visit as ADT describes it (PV1), and the cancel events that undo it.

HL7 v2.5.1 chapter 3: A01 admit, A04 register, A05 pre-admit, A02 transfer,
A03 discharge; A11 cancels A01/A04 (3.3.11), A12 cancels A02 (3.3.12: PV1-3
"must show the location of the patient prior to the original transfer"),
A13 cancels A03 (3.3.13: PV1-3 is the location after the cancellation).
A radiology engine keeps only what a modality can use: the patient class
(PV1-2), the current location (PV1-3, returned as Current Patient Location
(0038,0300) in the worklist), the prior location (PV1-6, so A12/A13 without a
PV1-3 can restore it) and a visit status in the terms of Visit Status ID
(0038,0008): SCHEDULED, ADMITTED, DISCHARGED.

Discharge and its cancel never touch orders or worklist steps: imaging after
discharge is routine, and the RIS cancels what should not happen (ORC CA).
Each event is a pure function ``(Visit, PatientRecord) -> Visit``; the table
:data:`VISIT_EVENTS` is the whole policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Connection, select, update

from engine.domain.records import PatientRecord
from engine.domain.tables import patients

__all__ = ["VISIT_EVENTS", "Visit", "apply_visit", "cancel_visit"]


@dataclass(frozen=True, slots=True)
class Visit:
    """The visit columns of one patient row."""

    patient_class: str = ""
    current_patient_location: str = ""
    prior_patient_location: str = ""
    visit_status: str = ""


#: Column → its length in ``patients`` (longer HL7 values are cut, as LO/CS would be).
_COLUMNS = {
    "patient_class": 16,
    "current_patient_location": 64,
    "prior_patient_location": 64,
    "visit_status": 16,
}


def _given(visit: Visit, record: PatientRecord) -> Visit:
    """Patient class and location where the record gives them (empty never blanks)."""
    return replace(
        visit,
        patient_class=record.patient_class or visit.patient_class,
        current_patient_location=record.assigned_patient_location
        or visit.current_patient_location,
    )


def _status(status: str) -> Callable[[Visit, PatientRecord], Visit]:
    def start(visit: Visit, record: PatientRecord) -> Visit:
        return replace(_given(visit, record), visit_status=status)

    start.__doc__ = f"A visit starts (or is updated) in status {status}."
    return start


def _update(visit: Visit, record: PatientRecord) -> Visit:
    """A08/A31/A10: the visit's fields as given; its status unchanged."""
    return _given(visit, record)


def _transfer(visit: Visit, record: PatientRecord) -> Visit:
    """A02: PV1-3 is the new location, PV1-6 (else the stored one) the prior."""
    prior = record.prior_patient_location or visit.current_patient_location
    return replace(_given(visit, record), prior_patient_location=prior)


def _discharge(visit: Visit, record: PatientRecord) -> Visit:
    """A03: the visit ends; the last location is kept as prior so A13 can restore it."""
    last = record.assigned_patient_location or visit.current_patient_location
    return replace(
        _given(visit, record),
        current_patient_location="",
        prior_patient_location=last,
        visit_status="DISCHARGED",
    )


def cancel_visit(visit: Visit, record: PatientRecord) -> Visit:
    """A11: the admission or registration did not happen: no current visit."""
    return Visit()


def _cancel_transfer(visit: Visit, record: PatientRecord) -> Visit:
    """A12: back where the patient was before the transfer (PV1-3, else the stored prior)."""
    back = record.assigned_patient_location or visit.prior_patient_location
    return replace(
        visit,
        patient_class=record.patient_class or visit.patient_class,
        current_patient_location=back,
        prior_patient_location="",
    )


def _cancel_discharge(visit: Visit, record: PatientRecord) -> Visit:
    """A13: the visit is open again, at PV1-3 or, if not given, where it ended."""
    back = record.assigned_patient_location or visit.prior_patient_location
    status = "ADMITTED" if visit.visit_status in ("DISCHARGED", "") else visit.visit_status
    return replace(
        visit,
        patient_class=record.patient_class or visit.patient_class,
        current_patient_location=back,
        prior_patient_location="",
        visit_status=status,
    )


#: Trigger event → the visit after it (HL7 v2.5.1 3.3). Events not listed leave the visit alone.
VISIT_EVENTS: dict[str, Callable[[Visit, PatientRecord], Visit]] = {
    "A01": _status("ADMITTED"),
    "A04": _status("ADMITTED"),
    "A05": _status("SCHEDULED"),
    "A02": _transfer,
    "A03": _discharge,
    "A08": _update,
    "A31": _update,
    "A10": _update,
    "A11": cancel_visit,
    "A12": _cancel_transfer,
    "A13": _cancel_discharge,
}


def apply_visit(conn: Connection, pk: int, record: PatientRecord, now: datetime) -> None:
    """Apply ``record.event``'s effect on the visit of patient ``pk`` (nothing if unlisted)."""
    effect = VISIT_EVENTS.get(record.event)
    if effect is None:
        return
    row = conn.execute(
        select(*(patients.c[k] for k in _COLUMNS)).where(patients.c.id == pk)
    ).one()
    before = Visit(*row)
    after = effect(before, record)
    if after != before:
        values = {k: getattr(after, k)[:n] for k, n in _COLUMNS.items()}
        conn.execute(update(patients).where(patients.c.id == pk).values(updated_at=now, **values))
