"""Issue #11, ADT: A47 for an id never seen, ADT without PID, events nothing implements."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from engine.domain.handlers import OrdersHandler, PatientsHandler
from engine.domain.tables import patient_merges, patients
from engine.errors import HL7ApplicationError, HL7Reject
from engine.store.database import Database

from .factories import apply_records, context, merge, order, patient

MSH = "MSH|^~\\&|HIS|HOSP|RADBRIDGE|HOSP|20261122080000||ADT^{event}|MSG1|P|2.5.1\r"
PID = "PID|1||NEW^^^HOSP^MR||DOE^JANE\r"


def _rows(db: Database, table: Any) -> list[Any]:
    return db.read(lambda c: c.execute(select(table).order_by(table.c.id)).all())


def _adt(db: Database, handler: PatientsHandler, event: str, records: list[dict[str, Any]],
         segments: str = PID) -> list[tuple[bool, str]]:  # fmt: skip
    ctx = context(records, MSH.format(event=event) + segments)
    db.writer.call(lambda conn: handler.apply(conn, ctx))
    return [(o.changed, o.note) for o in ctx.outcomes]


def test_a47_for_an_id_never_seen_creates_the_patient_and_retires_the_old_id(
    db: Database, patients_handler: PatientsHandler, orders_handler: OrdersHandler
) -> None:
    records = [patient("NEW", event="A47"), merge("NEW", "NEVERSEEN", kind="change_id")]
    assert _adt(db, patients_handler, "A47", records) == [(True, ""), (True, "")]
    assert [(p.patient_id, p.patient_name) for p in _rows(db, patients)] == [("NEW", "DOE^JANE")]
    link = _rows(db, patient_merges)[0]
    assert (link.kind, link.prior_patient_id, link.prior_pk, link.survivor_pk) == ("change_id", "NEVERSEEN", 1, 1)
    with pytest.raises(HL7ApplicationError) as refused:  # like A40, the old id now follows the merged-id policy
        apply_records(db, orders_handler, [order("PL1", patient_id="NEVERSEEN")])
    assert refused.value.code == 204


def test_a47_for_a_known_new_id_only_records_the_old_one(db: Database, patients_handler: PatientsHandler) -> None:
    _adt(db, patients_handler, "A08", [patient("NEW", event="A08")])
    _adt(db, patients_handler, "A47", [patient("NEW", event="A47"), merge("NEW", "GONE", kind="change_id")])
    assert [p.patient_id for p in _rows(db, patients)] == ["NEW"]
    assert [m.prior_patient_id for m in _rows(db, patient_merges)] == ["GONE"]


def test_a47_as_the_mapping_sends_it_renames_the_known_patient(
    db: Database, patients_handler: PatientsHandler
) -> None:
    """The A47's PID already carries the new id; applied first, it took that id and the rename hit AE 205."""
    _adt(db, patients_handler, "A08", [patient("OLD", event="A08", patient_name="OLD^NAME")])
    _adt(db, patients_handler, "A47", [patient("NEW", event="A47", patient_name="NEW^NAME"),
                                       merge("NEW", "OLD", kind="change_id")])  # fmt: skip
    assert [(p.id, p.patient_id, p.patient_name) for p in _rows(db, patients)] == [(1, "NEW", "NEW^NAME")]


def test_adt_without_pid_is_ae_101(db: Database, patients_handler: PatientsHandler) -> None:
    with pytest.raises(HL7ApplicationError) as refused:
        _adt(db, patients_handler, "A08", [], segments="EVN|A08\rPV1|1|O\r")
    assert (refused.value.code, refused.value.ack_code, str(refused.value.location)) == (101, "AE", "PID^1")
    assert refused.value.text == "ADT^A08 has no PID segment"


def test_adt_event_the_mapping_does_not_take_is_ar_201(db: Database, patients_handler: PatientsHandler) -> None:
    with pytest.raises(HL7Reject) as refused:
        _adt(db, patients_handler, "A09", [])
    assert (refused.value.code, refused.value.ack_code, str(refused.value.location)) == (201, "AR", "MSH^1^9^2")


def test_adt_event_no_handler_implements_is_ar_201_and_changes_nothing(
    db: Database, patients_handler: PatientsHandler
) -> None:
    with pytest.raises(HL7Reject) as refused:
        _adt(db, patients_handler, "A29", [patient("NEW", event="A29")])  # delete person: not implemented
    assert refused.value.code == 201 and "ADT^A29" in refused.value.text
    assert _rows(db, patients) == []


def test_order_message_without_orc_is_ae_101(db: Database, orders_handler: OrdersHandler) -> None:
    ctx = context([patient()], "MSH|^~\\&|RIS|H|RB|H|20261122||ORM^O01|M1|P|2.3.1\rPID|1||P1^^^HOSP\r")
    with pytest.raises(HL7ApplicationError) as refused:
        db.writer.call(lambda conn: orders_handler.apply(conn, ctx))
    assert (refused.value.code, str(refused.value.location)) == (101, "ORC^1")


def test_every_event_the_shipped_adt_mapping_accepts_is_implemented() -> None:
    import yaml

    from engine.domain.patients import IMPLEMENTED_EVENTS
    from tests.conftest import ROOT

    accepted = yaml.safe_load((ROOT / "mappings" / "adt-to-patient.yaml").read_text())["accept"]
    assert {t.split("^")[1] for t in accepted} <= IMPLEMENTED_EVENTS
