"""One patient identity for every record that names a patient (engine.domain.identity, issue #11).

``patients.trusted_issuers`` picks the PID-3 (and MRG-1) repetition that is the patient's
identity for patient, order and merge records alike; the shipped mappings give each record
all repetitions. The messages here go through the shipped mappings, then the handlers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine.config.models import EngineConfig
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.identity import choose_identity, resolve_identity, resolved_merge, resolved_order
from engine.domain.records import MergeRecord, OrderRecord, OtherPatientId, PatientRecord
from engine.domain.tables import orders, patient_other_ids, patients
from engine.handlers import InboundContext
from engine.hl7.er7 import Message
from engine.mapping import load_mappings
from engine.store.database import Database
from tests.conftest import ROOT

MAPPINGS = load_mappings(ROOT / "mappings")
REPRO_PID3 = "EX100234^^^NORTHSIDE~19800514-9999^^^NATIONAL"


def _msh(kind: str, control: str) -> str:
    return f"MSH|^~\\&|HIS|NORTHSIDE|RADBRIDGE|NORTHSIDE|20261122080000||{kind}|{control}|P|2.5.1"


def _orm(pid3: str, placer: str = "PL1", control: str = "ORM1") -> str:
    return "\r".join([
        _msh("ORM^O01", control),
        f"PID|1||{pid3}||Example^Alva^Maria||19800514|F",
        "PV1|1|O",
        f"ORC|NW|{placer}^RIS||||SC",
        f"OBR|1|{placer}^RIS||CTHEAD^CT head^L|||||||||||||ACC-{placer}|||||||CT",
    ]) + "\r"  # fmt: skip


def _adt(event: str, pid3: str, mrg1: str = "", control: str = "ADT1") -> str:
    segments = [_msh(f"ADT^{event}", control), f"EVN|{event}|20261122080000",
                f"PID|1||{pid3}||Example^Alva^Maria||19800514|F", "PV1|1|O"]
    if mrg1:
        segments.append(f"MRG|{mrg1}")
    return "\r".join(segments) + "\r"


def _config(engine_config: EngineConfig, trusted: list[str]) -> EngineConfig:
    return EngineConfig.model_validate({**engine_config.model_dump(), "patients": {"trusted_issuers": trusted}})


def _run(db: Database, handlers: list[Any], raw: str, mapping: str) -> None:
    """Map ``raw`` with the shipped mapping and run ``handlers`` on it in one transaction."""
    message = Message(raw)
    records = MAPPINGS[mapping].apply(message).records
    ctx = InboundContext(1, "test", message, datetime.now(UTC), records)

    def apply(conn: Any) -> None:
        for handler in handlers:
            handler.apply(conn, ctx)

    db.writer.call(apply)


def _patients(db: Database) -> list[tuple[str, str, str, str]]:
    rows = db.read(lambda c: c.execute(select(patients).order_by(patients.c.id)).all())
    return [(r.patient_id, r.issuer, r.patient_name, r.status) for r in rows]


def _order_patients(db: Database) -> list[tuple[str, str]]:
    stmt = select(patients.c.patient_id, patients.c.issuer).join(orders, orders.c.patient_pk == patients.c.id)
    return [tuple(r) for r in db.read(lambda c: c.execute(stmt.order_by(orders.c.id)).all())]


# ------------------------------------------------------------------ the rule itself (pure)


def _ids(*pairs: tuple[str, str]) -> list[OtherPatientId]:
    return [OtherPatientId(patient_id=p, issuer=i) for p, i in pairs]


def test_the_first_trusted_repetition_is_the_identity_in_repetition_order() -> None:
    first, *others = _ids(("A", "SITE"), ("N", "NATIONAL"), ("H", "HOSP"))
    chosen, rest = choose_identity(first, others, ["HOSP", "NATIONAL"])
    assert (chosen.patient_id, [o.patient_id for o in rest]) == ("N", ["A", "H"])


def test_without_a_trusted_repetition_the_mappings_choice_stands() -> None:
    first, *others = _ids(("A", "SITE"), ("N", "NATIONAL"))
    assert choose_identity(first, others, ["HOSP"])[0] is first
    assert choose_identity(first, others, [])[0] is first


def test_patient_order_and_merge_records_of_one_pid3_resolve_alike() -> None:
    others = [{"patient_id": "N1", "issuer": "NATIONAL"}]
    rec = PatientRecord(patient_id="A1", issuer="SITE", other_ids=others)
    order = OrderRecord(order_control="NW", patient_id="A1", issuer="SITE", other_ids=others)
    merge = MergeRecord(patient_id="A1", issuer="SITE", other_ids=others, prior_patient_id="A0",
                        prior_issuer="SITE", prior_other_ids=[{"patient_id": "N0", "issuer": "NATIONAL"}])
    trusted = ["NATIONAL"]
    assert resolve_identity(rec, trusted)[:2] == ("N1", "NATIONAL")
    assert (resolved_order(order, trusted).patient_id, resolved_order(order, trusted).issuer) == ("N1", "NATIONAL")
    resolved = resolved_merge(merge, trusted)
    assert (resolved.patient_id, resolved.prior_patient_id, resolved.prior_issuer) == ("N1", "N0", "NATIONAL")


# ------------------------------------------------------------------ the shipped mappings carry every repetition


def test_the_order_mapping_gives_the_order_record_every_pid3_repetition() -> None:
    records = MAPPINGS["order-to-worklist"].apply(Message(_orm(REPRO_PID3))).records
    order = next(r for r in records if r["record"] == "order")
    assert (order["patient_id"], order["issuer"]) == ("EX100234", "NORTHSIDE")
    assert [(o["patient_id"], o["issuer"]) for o in order["other_ids"]] == [("19800514-9999", "NATIONAL")]


def test_the_merge_mapping_gives_every_pid3_and_mrg1_repetition() -> None:
    raw = _adt("A40", "S1^^^NORTHSIDE~NS1^^^NATIONAL", "P1^^^NORTHSIDE~NP1^^^NATIONAL")
    merge = next(r for r in MAPPINGS["adt-to-patient"].apply(Message(raw)).records if r["record"] == "merge")
    assert [o["patient_id"] for o in merge["other_ids"]] == ["NS1"]
    assert [o["patient_id"] for o in merge["prior_other_ids"]] == ["NP1"]


# ------------------------------------------------------------------ the reproduction of issue #11


def test_an_order_with_the_trusted_id_second_lands_on_one_patient(db: Database, engine_config: EngineConfig) -> None:
    """trusted_issuers [NATIONAL], ORM PID-3 NORTHSIDE~NATIONAL: one patient, with the order."""
    cfg = _config(engine_config, ["NATIONAL"])
    _run(db, [OrdersHandler(order_policy(cfg))], _orm(REPRO_PID3), "order-to-worklist")
    assert _patients(db) == [("19800514-9999", "NATIONAL", "Example^Alva^Maria", "ACTIVE")]
    assert _order_patients(db) == [("19800514-9999", "NATIONAL")]
    others = db.read(lambda c: c.execute(select(patient_other_ids.c.patient_id, patient_other_ids.c.issuer)).all())
    assert [tuple(o) for o in others] == [("EX100234", "NORTHSIDE")]


def test_adt_then_order_with_both_handlers_share_the_trusted_patient(
    db: Database, engine_config: EngineConfig
) -> None:
    cfg = _config(engine_config, ["NATIONAL"])
    both = [PatientsHandler(patient_policy(cfg)), OrdersHandler(order_policy(cfg), upsert_patients=False)]
    _run(db, [PatientsHandler(patient_policy(cfg))], _adt("A04", "19800514-9999^^^NATIONAL"), "adt-to-patient")
    _run(db, both, _orm(REPRO_PID3), "order-to-worklist")
    assert [p[:2] for p in _patients(db)] == [("19800514-9999", "NATIONAL")]
    assert _order_patients(db) == [("19800514-9999", "NATIONAL")]


# ------------------------------------------------------------------ A40 and A47 with the trusted id not first


def test_a40_merges_by_the_trusted_ids_of_pid3_and_mrg1(db: Database, engine_config: EngineConfig) -> None:
    cfg = _config(engine_config, ["NATIONAL"])
    adt = PatientsHandler(patient_policy(cfg))
    _run(db, [adt], _adt("A04", "S1^^^NORTHSIDE~NS1^^^NATIONAL", control="1"), "adt-to-patient")
    _run(db, [OrdersHandler(order_policy(cfg))], _orm("P1^^^NORTHSIDE~NP1^^^NATIONAL"), "order-to-worklist")
    assert [p[:2] for p in _patients(db)] == [("NS1", "NATIONAL"), ("NP1", "NATIONAL")]
    _run(db, [adt], _adt("A40", "S1^^^NORTHSIDE~NS1^^^NATIONAL", "P1^^^NORTHSIDE~NP1^^^NATIONAL", "2"),
         "adt-to-patient")  # fmt: skip
    assert [(p[0], p[3]) for p in _patients(db)] == [("NS1", "ACTIVE"), ("NP1", "MERGED")]
    assert _order_patients(db) == [("NS1", "NATIONAL")]


def test_a47_renames_the_trusted_id_of_mrg1_to_that_of_pid3(db: Database, engine_config: EngineConfig) -> None:
    cfg = _config(engine_config, ["NATIONAL"])
    adt = PatientsHandler(patient_policy(cfg))
    _run(db, [OrdersHandler(order_policy(cfg))], _orm("OLD^^^NORTHSIDE~N-OLD^^^NATIONAL"), "order-to-worklist")
    _run(db, [adt], _adt("A47", "NEW^^^NORTHSIDE~N-NEW^^^NATIONAL", "OLD^^^NORTHSIDE~N-OLD^^^NATIONAL"),
         "adt-to-patient")  # fmt: skip
    assert [p[:2] + p[3:] for p in _patients(db)] == [("N-NEW", "NATIONAL", "ACTIVE")]
    assert _order_patients(db) == [("N-NEW", "NATIONAL")]


# ------------------------------------------------------------------ property: ADT and ORM always agree

_ISSUERS = ["NORTHSIDE", "NATIONAL", "SOUTH", ""]
_REPETITIONS = st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), st.sampled_from(_ISSUERS)),
                        min_size=1, max_size=4, unique=True)  # fmt: skip
_SERIAL = count()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(repetitions=_REPETITIONS, trusted=st.lists(st.sampled_from(_ISSUERS[:3]), max_size=3, unique=True),
       adt_first=st.booleans())  # fmt: skip
def test_adt_and_orm_for_one_pid3_land_on_the_same_patient(
    db: Database, engine_config: EngineConfig, repetitions: list[tuple[str, str]], trusted: list[str], adt_first: bool
) -> None:
    serial = next(_SERIAL)  # every example its own ids in the one database
    pid3 = "~".join(f"{serial}{pid}^^^{issuer}" for pid, issuer in repetitions)
    cfg = _config(engine_config, trusted)
    runs = [([PatientsHandler(patient_policy(cfg))], _adt("A08", pid3), "adt-to-patient"),
            ([OrdersHandler(order_policy(cfg))], _orm(pid3, placer=f"PL{serial}"), "order-to-worklist")]
    for handlers, raw, mapping in runs if adt_first else runs[::-1]:
        _run(db, handlers, raw, mapping)
    mine = [p for p in _patients(db) if p[0].startswith(str(serial)) and p[0][len(str(serial)):].isalpha()]
    assert len(mine) == 1, mine
    assert _order_patients(db)[-1] == mine[0][:2]
    expected = next((r for r in repetitions if r[1] in trusted), repetitions[0])
    assert mine[0][:2] == (f"{serial}{expected[0]}", expected[1])
