"""Visits from ADT (PV1) and the cancel events A11, A12, A13 (HL7 v2.5.1 3.3.11-3.3.13)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from engine.domain.handlers import OrdersHandler, PatientsHandler
from engine.domain.records import PatientRecord
from engine.domain.tables import patients, procedure_steps
from engine.domain.visits import VISIT_EVENTS, Visit
from engine.store.database import Database

from .factories import apply_records, order, patient


def _visit(db: Database) -> Any:
    return db.read(lambda c: c.execute(select(
        patients.c.patient_class, patients.c.current_patient_location,
        patients.c.prior_patient_location, patients.c.visit_status, patients.c.admission_id,
    )).one())  # fmt: skip


def _adt(db: Database, handler: PatientsHandler, event: str, **fields: Any) -> None:
    apply_records(db, handler, [patient(event=event, **fields)])


def _steps(db: Database) -> list[str]:
    return [r[0] for r in db.read(lambda c: c.execute(select(procedure_steps.c.status)).all())]


def test_update_without_pv1_values_keeps_the_visit() -> None:
    visit = Visit("I", "W1^101", "", "ADMITTED")
    assert VISIT_EVENTS["A08"](visit, PatientRecord(patient_id="P1", event="A08")) == visit


def test_admit_records_class_location_and_status(
    db: Database, patients_handler: PatientsHandler
) -> None:
    _adt(db, patients_handler, "A01", patient_class="I", assigned_patient_location="W1^101^A",
         admission_id="V1")  # fmt: skip
    assert tuple(_visit(db)) == ("I", "W1^101^A", "", "ADMITTED", "V1")


def test_a12_restores_the_location_before_the_transfer(
    db: Database, patients_handler: PatientsHandler
) -> None:
    _adt(db, patients_handler, "A01", patient_class="I", assigned_patient_location="W1^101^A")
    _adt(db, patients_handler, "A02", assigned_patient_location="W2^201^B")
    assert tuple(_visit(db))[1:3] == ("W2^201^B", "W1^101^A")
    _adt(db, patients_handler, "A12")  # no PV1-3: the stored prior location
    assert tuple(_visit(db))[:4] == ("I", "W1^101^A", "", "ADMITTED")


def test_a12_location_from_pv1_3_wins(db: Database, patients_handler: PatientsHandler) -> None:
    _adt(db, patients_handler, "A01", assigned_patient_location="W1")
    _adt(db, patients_handler, "A02", assigned_patient_location="W2", prior_patient_location="ER")
    _adt(db, patients_handler, "A12", assigned_patient_location="ER")
    assert _visit(db).current_patient_location == "ER"


def test_a03_ends_the_visit_and_a13_reopens_it_where_it_ended(
    db: Database, patients_handler: PatientsHandler
) -> None:
    _adt(db, patients_handler, "A01", patient_class="I", assigned_patient_location="W1^101^A")
    _adt(db, patients_handler, "A03")
    assert tuple(_visit(db))[1:4] == ("", "W1^101^A", "DISCHARGED")
    _adt(db, patients_handler, "A13")
    assert tuple(_visit(db))[:4] == ("I", "W1^101^A", "", "ADMITTED")


def test_a13_location_from_pv1_3_wins(db: Database, patients_handler: PatientsHandler) -> None:
    _adt(db, patients_handler, "A01", assigned_patient_location="W1")
    _adt(db, patients_handler, "A03")
    _adt(db, patients_handler, "A13", assigned_patient_location="W3", patient_class="I")
    assert tuple(_visit(db))[:4] == ("I", "W3", "", "ADMITTED")


def test_discharge_and_its_cancel_leave_worklist_steps_alone(
    db: Database, orders_handler: OrdersHandler, patients_handler: PatientsHandler
) -> None:
    apply_records(db, orders_handler, [patient(), order("PL1")])
    _adt(db, patients_handler, "A03")
    _adt(db, patients_handler, "A13")
    assert _steps(db) == ["SCHEDULED"]


def test_a11_clears_the_visit_the_admission_and_arrivals(
    db: Database, orders_handler: OrdersHandler, patients_handler: PatientsHandler
) -> None:
    apply_records(db, orders_handler, [patient(), order("PL1")])
    _adt(db, patients_handler, "A01", patient_class="I", assigned_patient_location="W1",
         admission_id="V1")  # fmt: skip
    _adt(db, patients_handler, "A10", assigned_patient_location="RAD^X1")
    assert (_steps(db), _visit(db).current_patient_location) == (["ARRIVED"], "RAD^X1")
    _adt(db, patients_handler, "A11", admission_id="V1")
    assert tuple(_visit(db)) == ("", "", "", "", "")
    assert _steps(db) == ["SCHEDULED"]


def test_an_order_pid_never_changes_the_visit(
    db: Database, orders_handler: OrdersHandler, patients_handler: PatientsHandler
) -> None:
    _adt(db, patients_handler, "A01", assigned_patient_location="W1")
    apply_records(db, orders_handler, [patient(assigned_patient_location="ELSEWHERE"), order("PL1")])
    assert _visit(db).current_patient_location == "W1"
