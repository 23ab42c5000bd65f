"""The HL7 explicit null ``""`` (HL7 v2.5.1 2.5.3) clears a stored demographic; an empty field keeps it.

Messages go through the shipped mappings and the handlers, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from engine.config.models import EngineConfig
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.reconcile import patient_input
from engine.domain.tables import orders, patients, procedure_steps
from engine.domain.worklist import MatchSettings, build_select
from engine.errors import HL7ApplicationError
from engine.handlers import InboundContext
from engine.hl7.er7 import Message
from engine.mapping import CompiledMapping, load_mappings
from engine.mapping.null import NULL
from engine.store.database import Database
from tests.conftest import migrated

MAPPINGS = load_mappings(Path(__file__).resolve().parents[2] / "mappings")
ADT = "MSH|^~\\&|PAS|HOSP|RADBRIDGE|HOSP|20261122080000||ADT^{event}|{control}|P|2.5.1\rEVN|{event}\r"
ORM = "MSH|^~\\&|RIS|HOSP|RADBRIDGE|HOSP|20261122080000||ORM^O01|{control}|P|2.5.1\r"
PID = "PID|1||MRN1^^^HOSP^MR||{name}||{birth}|{sex}\rPV1|1|O||||||{referring}\r"
FULL = {"name": "Doe^Jane^Ann", "birth": "19700101", "sex": "F", "referring": "77^House^Greg"}


@pytest.fixture
def store(db_url: str) -> Iterator[Database]:
    yield from migrated(db_url)


@pytest.fixture
def config(tmp_path: Path) -> EngineConfig:
    return EngineConfig(mappings_dir=tmp_path / "mappings", timezone="UTC")


def _send(db: Database, handler: Any, mapping: CompiledMapping, text: str) -> list[tuple[bool, str]]:
    message = Message(text)
    records = mapping.apply(message, provenance=False).records
    ctx = InboundContext(1, "test", message, datetime.now(UTC), records)
    db.writer.call(lambda conn: handler.apply(conn, ctx))
    return [(o.changed, o.note) for o in ctx.outcomes]


def _adt(db: Database, config: EngineConfig, event: str = "A08", control: str = "1", **pid: str) -> list[str]:
    text = ADT.format(event=event, control=control) + PID.format(**(FULL | pid))
    handler = PatientsHandler(patient_policy(config))
    return [note for _, note in _send(db, handler, MAPPINGS["adt-to-patient"], text) if note]


def _stored(db: Database) -> tuple[str, str, str, str]:
    row = db.read(lambda c: c.execute(select(patients)).one())
    return row.patient_name, row.birth_date, row.sex, row.referring_physician_name


def test_null_birth_date_clears_the_stored_one(store: Database, config: EngineConfig) -> None:
    _adt(store, config, "A01")
    notes = _adt(store, config, birth='""', control="2")
    assert _stored(store) == ("Doe^Jane^Ann", "", "F", "House^Greg")
    assert notes == ['patient MRN1: birth_date cleared (sent as HL7 null "")']


def test_empty_birth_date_keeps_the_stored_one(store: Database, config: EngineConfig) -> None:
    _adt(store, config, "A01")
    assert _adt(store, config, birth="", control="2") == []
    assert _stored(store) == ("Doe^Jane^Ann", "19700101", "F", "House^Greg")


@pytest.mark.parametrize("event", ["A31", "A28", "A04", "A05"])
def test_every_demographic_null_clears_its_value(store: Database, config: EngineConfig, event: str) -> None:
    _adt(store, config, "A01")
    notes = _adt(store, config, event, control="2", name='""', birth='""', sex='""', referring='""')
    assert _stored(store) == ("", "", "", "")
    assert notes == ['patient MRN1: patient_name, birth_date, sex, referring_physician_name cleared '
                     '(sent as HL7 null "")']


def test_null_component_rebuilds_the_name_without_it(store: Database, config: EngineConfig) -> None:
    _adt(store, config, "A01")
    assert _adt(store, config, name='Doe^Jane^""', control="2") == []  # a new name, not a clear
    assert _stored(store)[0] == "Doe^Jane"


def test_null_of_a_value_never_stored_says_nothing(store: Database, config: EngineConfig) -> None:
    _adt(store, config, "A01", sex="")
    assert _adt(store, config, sex='""', control="2") == []
    assert _stored(store)[2] == ""


def test_null_on_a_new_patient_creates_it_empty(store: Database, config: EngineConfig) -> None:
    assert _adt(store, config, "A04", birth='""') == []
    assert _stored(store) == ("Doe^Jane^Ann", "", "F", "House^Greg")


def test_null_patient_id_is_ae_101_at_pid_3(store: Database, config: EngineConfig) -> None:
    text = ADT.format(event="A08", control="1") + 'PID|1||""||Doe^Jane\r'
    with pytest.raises(HL7ApplicationError) as refused:
        MAPPINGS["adt-to-patient"].apply(Message(text), provenance=False)
    assert (refused.value.code, str(refused.value.location)) == (101, "PID^1^3^1")


def test_null_issuer_is_no_issuer_not_a_clear(store: Database, config: EngineConfig) -> None:
    text = ADT.format(event="A01", control="1") + 'PID|1||MRN1^^^""||Doe^Jane\r'
    handler = PatientsHandler(patient_policy(config))
    _send(store, handler, MAPPINGS["adt-to-patient"], text)
    row = store.read(lambda c: c.execute(select(patients)).one())
    assert (row.patient_id, row.issuer) == ("MRN1", "")


def test_order_pid_null_clears_and_the_worklist_shows_it(store: Database, config: EngineConfig) -> None:
    orders = OrdersHandler(order_policy(config))
    obr = "OBR|1|PL1||CTHEAD^CT head^L" + "|" * 20 + "CT"
    base = ORM.format(control="1") + PID.format(**FULL) + f"ORC|NW|PL1||||SC\r{obr}\r"
    _send(store, orders, MAPPINGS["order-to-worklist"], base)
    xo = ORM.format(control="2") + PID.format(**(FULL | {"birth": '""'})) + f"ORC|XO|PL1\r{obr}\r"
    notes = [n for _, n in _send(store, orders, MAPPINGS["order-to-worklist"], xo) if n]
    assert 'patient MRN1: birth_date cleared (sent as HL7 null "")' in notes
    query = Dataset()
    query.PatientBirthDate = ""
    query.PatientID = "MRN1"
    rows = store.read(lambda c: c.execute(build_select(query, MatchSettings())).mappings().all())
    assert [r["PatientBirthDate"] for r in rows] == [""]


def test_a_delete_is_remembered_until_a_value_comes(store: Database, config: EngineConfig) -> None:
    _adt(store, config, "A01")
    _adt(store, config, birth='""', sex='""', control="2")
    _adt(store, config, control="3", birth="", sex="")  # empty: no change, the deletes stand
    assert store.read(lambda c: c.execute(select(patients.c.cleared)).scalar_one()) == "birth_date sex"
    _adt(store, config, control="4", birth="19800202", sex="")
    row = store.read(lambda c: c.execute(select(patients)).one())
    assert (row.birth_date, row.sex, row.cleared) == ("19800202", "", "sex")


def test_the_image_input_carries_a_deleted_value_as_null(store: Database, config: EngineConfig) -> None:
    _adt(store, config, "A01")
    _adt(store, config, birth='""', control="2")
    pk = store.read(lambda c: c.execute(select(patients.c.id)).scalar_one())
    given = store.read(lambda c: patient_input(c, pk))["patient"]
    assert given["birth_date"] is NULL and given["sex"] == "F"
    image = MAPPINGS["order-to-image"].apply_to({"order": {"patient_id": "MRN1"}, "patient": given})
    assert image.records[0]["PatientBirthDate"] is NULL


def _order_rows(db: Database) -> Any:
    return db.read(lambda c: c.execute(
        select(orders.c.requested_procedure_description, orders.c.referring_physician_name, orders.c.cleared,
               procedure_steps.c.description).join(procedure_steps, procedure_steps.c.order_pk == orders.c.id)).one())


def _orm(config: EngineConfig, db: Database, control: str, code: str, referring: str) -> list[str]:
    obr = f"OBR|1|PL1||{code}" + "|" * 20 + "CT"
    orc = "ORC|NW|PL1||||SC" if control == "1" else "ORC|XO|PL1"
    text = ORM.format(control=control) + PID.format(**(FULL | {"referring": referring})) + f"{orc}\r{obr}\r"
    return [n for _, n in _send(db, OrdersHandler(order_policy(config)), MAPPINGS["order-to-worklist"], text) if n]


def test_an_xo_with_null_fields_clears_them_on_the_order_and_step(store: Database, config: EngineConfig) -> None:
    _orm(config, store, "1", "CTHEAD^CT head^L^^CT head plain", "77^House^Greg")
    assert tuple(_order_rows(store)) == ("CT head", "House^Greg", "", "CT head plain")
    notes = _orm(config, store, "2", 'CTHEAD^""^L^^""', '""')
    assert tuple(_order_rows(store)) == ("", "", "requested_procedure_description referring_physician_name "
                                         "scheduled_procedure_step_description", "")
    assert 'order placer PL1: requested_procedure_description, referring_physician_name, ' \
           'scheduled_procedure_step_description cleared (sent as HL7 null "")' in notes
    query = Dataset()
    query.RequestedProcedureDescription = ""
    query.PatientID = "MRN1"
    rows = store.read(lambda c: c.execute(build_select(query, MatchSettings())).mappings().all())
    assert [r["RequestedProcedureDescription"] for r in rows] == [""]


def test_an_xo_with_empty_fields_keeps_them(store: Database, config: EngineConfig) -> None:
    _orm(config, store, "1", "CTHEAD^CT head^L^^CT head plain", "77^House^Greg")
    _orm(config, store, "2", "CTHEAD^^L", "")
    assert tuple(_order_rows(store)) == ("CT head", "House^Greg", "", "CT head plain")


def test_a_value_after_a_null_leaves_the_cleared_list(store: Database, config: EngineConfig) -> None:
    _orm(config, store, "1", "CTHEAD^CT head^L", "77^House^Greg")
    _orm(config, store, "2", 'CTHEAD^""^L', '""')
    _orm(config, store, "3", "CTHEAD^CT head again^L", "")
    row = _order_rows(store)
    assert (row.requested_procedure_description, row.referring_physician_name, row.cleared) == (
        "CT head again", "", "referring_physician_name")


def test_an_order_that_nulls_something_hashes_its_nulls(store: Database, config: EngineConfig) -> None:
    """A resent XO with the same nulls changes nothing; the same XO without them is a change."""
    _orm(config, store, "1", "CTHEAD^CT head^L", "77^House^Greg")
    assert _orm(config, store, "2", 'CTHEAD^""^L', "77^House^Greg")
    assert any("changed nothing" in n for n in _orm(config, store, "3", 'CTHEAD^""^L', "77^House^Greg"))
    assert not any("changed nothing" in n for n in _orm(config, store, "4", "CTHEAD^^L", "77^House^Greg"))


OMI = "MSH|^~\\&|RIS|HOSP|RADBRIDGE|HOSP|20261122080000||OMI^O23|{control}|P|2.5.1\r"


def test_an_xo_of_a_two_step_order_clears_the_order_fields_and_leaves_the_steps(
    store: Database, config: EngineConfig
) -> None:
    ipcs = "IPC|ACC1|RP1|1.2.3|SPS1|CT|^CT plain|||CT1\rIPC|ACC1|RP1|1.2.3|SPS2|CT|^CT contrast|||CT1\r"

    def omi(control: str, orc: str, code: str) -> list[str]:
        text = OMI.format(control=control) + PID.format(**FULL) + f"{orc}\rOBR|1|PL1||{code}\r{ipcs}"
        return [n for _, n in _send(store, OrdersHandler(order_policy(config)), MAPPINGS["order-to-worklist"], text)
                if n]

    omi("1", "ORC|NW|PL1||||SC", "CTHEAD^CT head^L")
    notes = omi("2", "ORC|XO|PL1", 'CTHEAD^""^L')
    rows = store.read(lambda c: c.execute(
        select(orders.c.requested_procedure_description, procedure_steps.c.description)
        .join(procedure_steps, procedure_steps.c.order_pk == orders.c.id).order_by(procedure_steps.c.id)).all())
    assert [tuple(r) for r in rows] == [("", "CT plain"), ("", "CT contrast")]
    assert notes == ['order placer PL1, accession ACC1: requested_procedure_description cleared (sent as HL7 null "")']
