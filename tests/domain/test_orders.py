"""Order lifecycle, accession numbers, UIDs and patients through the handlers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from engine.config.models import EngineConfig
from engine.domain.accession import format_accession, next_sequence_value
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.housekeeping import expire_steps, purge_finished
from engine.domain.orders import DEFAULT_CONTROL_TABLE, load_control_table, map_priority, split_start
from engine.domain.tables import orders, patient_other_ids, patients, procedure_steps
from engine.domain.uids import derived_uid
from engine.errors import HL7ApplicationError
from engine.store.database import Database

from .factories import apply_records, merge, order, patient


def _rows(db: Database, table: Any) -> list[Any]:
    return db.read(lambda c: c.execute(select(table).order_by(table.c.id)).all())


def test_each_order_group_is_its_own_step(db: Database, orders_handler: OrdersHandler) -> None:
    apply_records(db, orders_handler, [patient(), order("PL1"), order("PL2")])
    assert len(_rows(db, procedure_steps)) == 2


def test_order_for_unknown_patient_creates_the_patient(
    db: Database, orders_handler: OrdersHandler
) -> None:
    apply_records(db, orders_handler, [order("PL1", patient_id="NEW")])
    assert [p.patient_id for p in _rows(db, patients)] == ["NEW"]


def test_unknown_order_control_is_rejected_at_its_orc_1_and_changes_nothing(
    db: Database, orders_handler: OrdersHandler
) -> None:
    with pytest.raises(HL7ApplicationError) as err:
        apply_records(
            db, orders_handler, [patient(), order("PL1"), order("PL2", order_control="ZZ")]
        )
    assert str(err.value.location) == "ORC^2^1"  # the second order group's ORC
    assert err.value.text == "ORC-1 'ZZ' with ORC-5 'SC' is not in order_control_status.csv"
    assert _rows(db, orders) == [] and _rows(db, patients) == []


def test_resent_identical_order_changes_nothing(
    db: Database, orders_handler: OrdersHandler
) -> None:
    apply_records(db, orders_handler, [patient(), order("PL1")])
    first = _rows(db, orders)
    apply_records(db, orders_handler, [patient(), order("PL1")])
    assert _rows(db, orders) == first


def test_generated_accession_numbers_are_unique_and_follow_the_pattern(
    db: Database, orders_handler: OrdersHandler
) -> None:
    apply_records(db, orders_handler, [order("PL1"), order("PL2")])
    numbers = [o.accession_number for o in _rows(db, orders)]
    today = datetime.now(UTC).strftime("%Y%m%d")
    assert numbers == [f"{today}000001", f"{today}000002"]


def test_given_accession_is_kept_unless_policy_always_generates(
    db: Database, engine_config: EngineConfig
) -> None:
    cfg = engine_config.model_copy(update={"orders": engine_config.orders.model_copy(
        update={"accession_policy": "always_generate", "accession_pattern": "RB{seq:05d}"})})  # fmt: skip
    apply_records(db, OrdersHandler(order_policy(cfg)), [order("PL1", accession_number="GIVEN")])
    assert _rows(db, orders)[0].accession_number == "RB00001"


def test_require_policy_rejects_orders_without_accession(
    db: Database, engine_config: EngineConfig
) -> None:
    cfg = engine_config.model_copy(update={"orders": engine_config.orders.model_copy(
        update={"accession_policy": "require"})})  # fmt: skip
    with pytest.raises(HL7ApplicationError) as err:
        apply_records(db, OrdersHandler(order_policy(cfg)), [order("PL1")])
    assert err.value.code == 101


def test_sequence_survives_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'seq.db'}"
    values = []
    for _ in range(2):
        db = Database(url)
        db.migrate()
        values += [db.writer.call(lambda c: next_sequence_value(c, "acc")) for _ in range(2)]
        db.close()
    assert values == [1, 2, 3, 4]


def test_accession_pattern_rejects_values_over_16_characters() -> None:
    with pytest.raises(ValueError):
        format_accession("VERYLONGPREFIX{seq:06d}", 1, date(2026, 1, 1))


def test_study_uid_is_deterministic_for_a_resent_order(
    tmp_path: Path, engine_config: EngineConfig
) -> None:
    uids = []
    for n in range(2):
        db = Database(f"sqlite:///{tmp_path / f'{n}.db'}")
        db.migrate()
        apply_records(db, OrdersHandler(order_policy(engine_config)), [order("PL1")])
        uids.append(_rows(db, orders)[0].study_instance_uid)
        db.close()
    assert uids[0] == uids[1] and uids[0].startswith("2.25.") and len(uids[0]) <= 64


def test_uid_under_an_organisation_root_fits_64_characters() -> None:
    uid = derived_uid("1.2.826.0.1.3680043.10.999", "study", "x")
    assert uid.startswith("1.2.826.0.1.3680043.10.999.") and len(uid) <= 64


def test_ids_are_derived_when_missing(db: Database, orders_handler: OrdersHandler) -> None:
    apply_records(db, orders_handler, [order("PL1", accession_number="ACC7")])
    o, s = _rows(db, orders)[0], _rows(db, procedure_steps)[0]
    assert (o.requested_procedure_id, s.sps_id) == ("ACC7", "ACC7")


def test_station_rules_fill_the_ae_title(db: Database, engine_config: EngineConfig) -> None:
    rules = [{"modality": "MR", "ae_titles": ["MR1", "MR2"]}, {"ae_titles": ["ANY"]}]
    cfg = EngineConfig.model_validate(
        {**engine_config.model_dump(), "orders": {"station_rules": rules}}
    )
    apply_records(
        db,
        OrdersHandler(order_policy(cfg)),
        [order("PL1", modality="MR", scheduled_station_ae_title="")],
    )
    assert _rows(db, procedure_steps)[0].scheduled_station_ae_title == "MR1\\MR2"


def test_xo_updates_in_place_and_ca_hides(db: Database, orders_handler: OrdersHandler) -> None:
    apply_records(db, orders_handler, [order("PL1")])
    apply_records(
        db, orders_handler, [order("PL1", order_control="XO", scheduled_start="202611251000")]
    )
    assert [(s.start_date, s.status) for s in _rows(db, procedure_steps)] == [
        ("20261125", "SCHEDULED")
    ]
    apply_records(db, orders_handler, [order("PL1", order_control="CA", order_status="CA")])
    assert [s.status for s in _rows(db, procedure_steps)] == ["CANCELED"]


def test_cancel_of_unknown_order_is_an_error(db: Database, orders_handler: OrdersHandler) -> None:
    with pytest.raises(HL7ApplicationError) as err:
        apply_records(db, orders_handler, [order("NOPE", order_control="CA", order_status="CA")])
    assert err.value.code == 204


def test_non_imaging_orders_are_ignored_or_rejected_per_channel(
    db: Database, engine_config: EngineConfig
) -> None:
    apply_records(db, OrdersHandler(order_policy(engine_config)), [order("LAB1", modality="LAB")])
    assert _rows(db, orders) == []
    cfg = EngineConfig.model_validate(
        {**engine_config.model_dump(), "orders": {"non_imaging_by_channel": {"lab": "reject"}}}
    )
    with pytest.raises(HL7ApplicationError):
        apply_records(db, OrdersHandler(order_policy(cfg, "lab")), [order("LAB1", modality="LAB")])


def test_control_table_is_loaded_from_the_site_file(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "order_control,order_status,sps_status\nNW,,SCHEDULED\nXR,,SCHEDULED\n", encoding="utf-8"
    )
    assert load_control_table(path) == {("NW", ""): "SCHEDULED", ("XR", ""): "SCHEDULED"}


def test_the_built_in_control_table_is_the_shipped_one() -> None:
    """A site without the file gets the same statuses as the shipped ``mappings/tables`` file."""
    shipped = Path(__file__).resolve().parents[2] / "mappings" / "tables" / "order_control_status.csv"
    assert load_control_table(shipped) == DEFAULT_CONTROL_TABLE


def test_start_time_and_priority_mapping() -> None:
    now = datetime(2026, 11, 22, 7, 0, tzinfo=UTC)
    assert split_start("202611220930", now) == ("20261122", "093000", "20261122093000")
    assert split_start("", now)[2] == "20261122070000"
    assert (map_priority("S"), map_priority("R"), map_priority("HIGH")) == (
        "STAT",
        "ROUTINE",
        "HIGH",
    )
    with pytest.raises(HL7ApplicationError):
        split_start("20261399", now)


def test_trusted_issuer_picks_the_identity_and_keeps_other_ids(
    db: Database, engine_config: EngineConfig
) -> None:
    cfg = EngineConfig.model_validate(
        {**engine_config.model_dump(), "patients": {"trusted_issuers": ["HOSP"]}}
    )
    from engine.domain.handlers import patient_policy

    rec = patient("X9", issuer="OTHER", other_ids=[{"patient_id": "P1", "issuer": "HOSP"}])
    apply_records(db, PatientsHandler(patient_policy(cfg)), [rec])
    assert [(p.patient_id, p.issuer) for p in _rows(db, patients)] == [("P1", "HOSP")]
    assert [(o.patient_id, o.issuer) for o in _rows(db, patient_other_ids)] == [("X9", "OTHER")]


def test_a40_moves_orders_and_keeps_prior_as_merged(
    db: Database, orders_handler: OrdersHandler, patients_handler: PatientsHandler
) -> None:
    apply_records(db, orders_handler, [patient("TMP"), order("PL1", patient_id="TMP")])
    apply_records(db, patients_handler, [patient("REAL"), merge("REAL", "TMP")])
    by_id = {p.patient_id: p for p in _rows(db, patients)}
    assert by_id["TMP"].status == "MERGED" and by_id["TMP"].merged_into_id == by_id["REAL"].id
    assert _rows(db, orders)[0].patient_pk == by_id["REAL"].id


def test_hl7_for_merged_id_is_rejected_by_default(
    db: Database, orders_handler: OrdersHandler, patients_handler: PatientsHandler
) -> None:
    apply_records(db, patients_handler, [patient("TMP"), patient("REAL"), merge("REAL", "TMP")])
    with pytest.raises(HL7ApplicationError) as err:
        apply_records(db, orders_handler, [order("PL1", patient_id="TMP")])
    assert err.value.code == 204


def test_merge_into_itself_is_an_error(db: Database, patients_handler: PatientsHandler) -> None:
    with pytest.raises(HL7ApplicationError):
        apply_records(db, patients_handler, [merge("P1", "P1")])


def test_several_merge_pairs_in_one_message(
    db: Database, patients_handler: PatientsHandler
) -> None:
    apply_records(
        db,
        patients_handler,
        [patient("A"), patient("B"), patient("C"), merge("C", "A"), merge("C", "B")],
    )
    assert sorted(p.patient_id for p in _rows(db, patients) if p.status == "MERGED") == ["A", "B"]


def test_a47_changes_the_identifier(db: Database, patients_handler: PatientsHandler) -> None:
    apply_records(db, patients_handler, [patient("OLD"), merge("NEW", "OLD", kind="change_id")])
    assert [p.patient_id for p in _rows(db, patients)] == ["NEW"]


def test_hl7_for_an_a47_replaced_id_is_refused_like_a_merged_one(
    db: Database, orders_handler: OrdersHandler, patients_handler: PatientsHandler
) -> None:
    apply_records(db, patients_handler, [patient("OLD"), merge("NEW", "OLD", kind="change_id")])
    for handler, records in ((patients_handler, [patient("OLD")]), (orders_handler, [order("PL1", patient_id="OLD")])):
        with pytest.raises(HL7ApplicationError) as refused:
            apply_records(db, handler, records)
        assert refused.value.code == 204 and str(refused.value.location) == "PID^1^3"
    assert [p.patient_id for p in _rows(db, patients)] == ["NEW"] and _rows(db, orders) == []
    apply_records(db, patients_handler, [patient("OTHER"), merge("OLD", "OTHER", kind="change_id")])
    apply_records(db, orders_handler, [order("PL2", patient_id="OLD")])  # the id is held again: plain HL7
    assert sorted(p.patient_id for p in _rows(db, patients)) == ["NEW", "OLD"]


def test_a40_naming_an_id_an_a47_retired(db: Database, engine_config: EngineConfig,
                                         patients_handler: PatientsHandler, orders_handler: OrdersHandler) -> None:
    """Refused by default (204 at MRG-1); with ``follow`` the renamed patient is the prior."""
    apply_records(db, orders_handler, [patient("X"), order("PL1", patient_id="X")])
    apply_records(db, patients_handler, [merge("Y", "X", kind="change_id"), patient("Z")])
    with pytest.raises(HL7ApplicationError) as refused:
        apply_records(db, patients_handler, [merge("Z", "X")])
    assert refused.value.code == 204 and str(refused.value.location) == "MRG^1^1"
    assert sorted(p.patient_id for p in _rows(db, patients)) == ["Y", "Z"]  # no ghost X

    followed = PatientsHandler(patient_policy(engine_config.model_copy(update={
        "patients": engine_config.patients.model_copy(update={"merged_id_policy": "follow"})})))  # fmt: skip
    apply_records(db, followed, [merge("Y", "X")])  # into its own new id: nothing to do
    assert [p.status for p in _rows(db, patients)] == ["ACTIVE", "ACTIVE"]
    apply_records(db, followed, [merge("Z", "X")])
    by_pk = {p.id: p for p in _rows(db, patients)}
    assert [by_pk[o.patient_pk].patient_id for o in _rows(db, orders)] == ["Z"]
    assert {p.patient_id: p.status for p in by_pk.values()} == {"Y": "MERGED", "Z": "ACTIVE"}


def test_follow_policy_applies_hl7_for_merged_and_replaced_ids_to_the_survivor(
    db: Database, engine_config: EngineConfig
) -> None:
    followed = engine_config.model_copy(update={"patients": engine_config.patients.model_copy(
        update={"merged_id_policy": "follow"})})  # fmt: skip
    orders_h, patients_h = OrdersHandler(order_policy(followed)), PatientsHandler(patient_policy(followed))
    apply_records(db, patients_h, [patient("A"), patient("B"), merge("B", "A"),
                                   patient("C"), merge("D", "C", kind="change_id")])  # fmt: skip
    apply_records(db, orders_h, [order("PL1", patient_id="A"), order("PL2", patient_id="C")])
    apply_records(db, patients_h, [patient("C", patient_name="RENAMED^BY^OLD^ID")])
    by_pk = {p.id: p for p in _rows(db, patients)}
    assert sorted(by_pk[o.patient_pk].patient_id for o in _rows(db, orders)) == ["B", "D"]
    assert [p.patient_name for p in by_pk.values() if p.patient_id == "D"] == ["RENAMED^BY^OLD^ID"]
    assert sorted(p.patient_id for p in by_pk.values()) == ["A", "B", "D"]  # no new patient for C


def test_a10_marks_steps_arrived_and_a11_undoes(
    db: Database, orders_handler: OrdersHandler, patients_handler: PatientsHandler
) -> None:
    apply_records(db, orders_handler, [patient(), order("PL1")])
    apply_records(db, patients_handler, [patient(event="A10")])
    assert _rows(db, procedure_steps)[0].status == "ARRIVED"
    apply_records(db, patients_handler, [patient(event="A11")])
    assert _rows(db, procedure_steps)[0].status == "SCHEDULED"


def test_housekeeping_expires_old_steps_and_purges_finished(
    db: Database, orders_handler: OrdersHandler
) -> None:
    now = datetime.now(UTC)
    soon = (now + timedelta(hours=1)).strftime("%Y%m%d%H%M")  # not a fixed date: it would expire too, one day
    apply_records(db, orders_handler,
                  [order("PL1", scheduled_start="202001010800"), order("PL2", scheduled_start=soon)])
    assert db.writer.call(lambda c: expire_steps(c, now, timedelta(hours=72))) == 1
    assert (
        db.writer.call(lambda c: purge_finished(c, now + timedelta(days=31), timedelta(days=30)))
        == 1
    )
    assert db.read(lambda c: c.execute(select(func.count()).select_from(orders)).scalar_one()) == 1


def _both_handlers(db: Database, engine_config: EngineConfig, records: list[dict[str, Any]]) -> list[str]:
    """Run ``patients`` then ``orders`` on one message as a channel listing both does; return the SQL run."""
    from engine.domain.handlers import patient_policy
    from engine.handlers import InboundContext
    from engine.hl7.er7 import Message

    from .factories import MSH

    handlers = [PatientsHandler(patient_policy(engine_config)),
                OrdersHandler(order_policy(engine_config), upsert_patients=False)]
    ctx = InboundContext(1, "test", Message(MSH + "\r"), datetime.now(UTC), records)
    statements: list[str] = []

    def run(conn: Any) -> None:
        raw = conn.connection.dbapi_connection
        raw.set_trace_callback(statements.append)
        try:
            for handler in handlers:
                handler.apply(conn, ctx)
        finally:
            raw.set_trace_callback(None)

    db.writer.call(run)
    return statements


def test_orders_reuse_the_patient_the_patients_handler_just_upserted(
    db: Database, engine_config: EngineConfig
) -> None:
    _both_handlers(db, engine_config, [patient(), order("PL0")])
    statements = _both_handlers(db, engine_config, [patient(), order("PL1")])
    assert sum("FROM patients" in s for s in statements) == 1
    (pat,) = _rows(db, patients)
    assert {o.patient_pk for o in _rows(db, orders)} == {pat.id}


def test_a_new_order_looks_for_no_stored_study_of_its_own(db: Database, engine_config: EngineConfig) -> None:
    # Only the unscheduled-studies probe: a new order's pk is new, so no stored study can name it.
    statements = _both_handlers(db, engine_config, [patient(), order("PL1")])
    (probe,) = [s for s in statements if "studies" in s]
    assert "order_pk IS NULL" in probe


def test_a_changed_resent_order_still_looks_for_its_stored_studies(
    db: Database, engine_config: EngineConfig
) -> None:
    _both_handlers(db, engine_config, [patient(), order("PL1")])
    statements = _both_handlers(db, engine_config, [patient(), order("PL1", priority="S")])
    assert sum("studies" in s for s in statements) == 2  # the probe, then this order's stored studies


def test_orders_follow_the_trusted_identity_the_patients_handler_chose(
    db: Database, engine_config: EngineConfig
) -> None:
    cfg = EngineConfig.model_validate(
        {**engine_config.model_dump(), "patients": {"trusted_issuers": ["HOSP"]}}
    )
    others = [{"patient_id": "P1", "issuer": "HOSP"}]
    rec = patient("X9", issuer="OTHER", other_ids=others)
    _both_handlers(db, cfg, [rec, order("PL1", patient_id="X9", issuer="OTHER", other_ids=others)])
    by_pk = {p.id: (p.patient_id, p.issuer) for p in _rows(db, patients)}
    assert list(by_pk.values()) == [("P1", "HOSP")]  # one patient: no second row for X9/OTHER
    assert [by_pk[o.patient_pk] for o in _rows(db, orders)] == [("P1", "HOSP")]


def test_start_date_must_be_a_calendar_date() -> None:
    now = datetime(2026, 11, 22, 7, 0, tzinfo=UTC)
    assert split_start("20240229", now)[0] == "20240229"
    for bad in ("20230229", "20261131", "00001122"):
        with pytest.raises(HL7ApplicationError):
            split_start(bad, now)


def test_a_start_written_in_other_digits_than_ascii_is_refused_not_stored() -> None:
    """Python's ``isdigit``/``int`` accept fullwidth and other Unicode digits: a start time of them was
    stored as a non-ASCII DA/TM and served so on the worklist (DICOM DA/TM are ASCII digits)."""
    now = datetime(2026, 11, 22, 7, 0, tzinfo=UTC)
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in "202611220930")  # U+FF10..FF19
    for bad in (fullwidth, "2026112209" + fullwidth[-2] + "0", "202611220930\u00b2"):
        with pytest.raises(HL7ApplicationError):
            split_start(bad, now)


@pytest.mark.parametrize("fields", [
    {},
    {"requested_procedure_code": {"code_value": "CTHEAD", "coding_scheme_designator": "L", "code_meaning": "CT Kopf ü"},
     "other_ids": [{"patient_id": "X9", "issuer": "OTHER"}], "placer_order_namespace": "RIS"},
    {"requested_procedure_description": "Thorax \\ \"quoted\" \u00e9\u4e2d", "priority": "S"},
])  # fmt: skip
def test_a_stored_content_hash_is_the_sha256_of_the_records_model_dump_json(
    db: Database, orders_handler: OrdersHandler, fields: dict[str, Any]
) -> None:
    """Orders stored by earlier versions were hashed from ``model_dump_json``: the hash must not move,
    or a resent identical order would be taken for a change after an upgrade."""
    import hashlib

    from engine.domain.records import OrderRecord

    record = order("PLH", **fields)
    apply_records(db, orders_handler, [patient(), record])
    # A backslash (DICOM's value delimiter) is stored as '/' (engine.hl7.dicom_text): the record hashed is
    # the one stored, so an order stored before with a backslash is updated once when resent.
    stored = {k: v.replace("\\", "/") if isinstance(v, str) else v for k, v in record.items()}
    # Earlier versions had no ``steps`` and no ``cleared`` (HL7 nulls): an order without them is hashed
    # without the keys.
    earlier = OrderRecord.model_validate(stored).model_dump_json(exclude={"steps", "cleared"})
    assert '"cleared"' not in earlier and '"steps"' not in earlier
    expected = hashlib.sha256(earlier.encode()).hexdigest()
    assert [o.content_hash for o in _rows(db, orders)] == [expected]
    apply_records(db, orders_handler, [patient(), record])  # resent: still recognised as identical
    assert [o.content_hash for o in _rows(db, orders)] == [expected]


@pytest.mark.parametrize(("records", "segment"), [
    ([patient(), order("PLV", unknown_field="x")], "ORC"),
    ([patient(sex=["F"]), order("PLV")], "PID"),
])  # fmt: skip
def test_an_invalid_record_is_ae_101_at_its_segment_and_changes_nothing(
    db: Database, orders_handler: OrdersHandler, records: list[dict[str, Any]], segment: str
) -> None:
    with pytest.raises(HL7ApplicationError) as caught:
        apply_records(db, orders_handler, records)
    assert caught.value.code == 101
    assert str(caught.value.location).startswith(segment)
    assert f"{segment} record invalid" in caught.value.text
    assert _rows(db, orders) == []


def _without_patient(**fields: Any) -> dict[str, Any]:
    """An order record from an ORM^O01 without PID (its patient group is optional): no patient id."""
    return {**order("PL1", **fields), "patient_id": "", "issuer": ""}


def test_a_cancel_without_pid_finds_its_order_by_number(db: Database, orders_handler: OrdersHandler) -> None:
    """A Polish HIS's cancel (CLININET, in public sample collections) is MSH, ORC, OBR and NTE: no PID.
    It was AE 101 'patient_id is required'; the order stayed on the worklist."""
    apply_records(db, orders_handler, [patient(), order("PL1")])

    apply_records(db, orders_handler, [_without_patient(order_control="CA", order_status="")])

    assert [s.status for s in _rows(db, procedure_steps)] == ["CANCELED"]
    assert [p.patient_id for p in _rows(db, patients)] == ["P1"]


def test_a_new_order_without_pid_is_refused_at_pid_3(db: Database, orders_handler: OrdersHandler) -> None:
    with pytest.raises(HL7ApplicationError) as err:
        apply_records(db, orders_handler, [_without_patient()])

    assert (err.value.code, str(err.value.location)) == (101, "PID^1^3^1")
    assert _rows(db, orders) == [] and _rows(db, patients) == []


def test_a_cancel_without_pid_of_an_unknown_order_is_refused_at_orc_2(
    db: Database, orders_handler: OrdersHandler
) -> None:
    with pytest.raises(HL7ApplicationError) as err:
        apply_records(db, orders_handler, [_without_patient(order_control="CA", order_status="")])

    assert (err.value.code, str(err.value.location)) == (204, "ORC^1^2")


_TWO_OBR = "\r".join([
    "MSH|^~\\&|RIS|HOSP|RADBRIDGE|HOSP|20261122090000||ORM^O01|M1|P|2.3.1",
    "PID|1||P1^^^HOSP", "ORC|NW|PL1|FPL1||SC", "OBR|1|PL1|FPL1|CTHEAD^CT head^L", "OBR|2|PL1|FPL2|CTNECK^CT neck^L",
]) + "\r"


def test_a_second_obr_under_one_orc_is_refused_not_dropped(db: Database, orders_handler: OrdersHandler) -> None:
    """One ORC, two OBRs: the mapping reads one procedure per ORC, so the CT neck was dropped under an AA."""
    with pytest.raises(HL7ApplicationError) as err:
        apply_records(db, orders_handler, [patient(), order("PL1")], _TWO_OBR)

    assert (err.value.code, str(err.value.location)) == (100, "OBR^2")
    assert _rows(db, orders) == []


def test_a_second_ipc_under_one_orc_is_a_second_step_of_the_one_order(
    db: Database, orders_handler: OrdersHandler
) -> None:
    """RAD TF-2 4.4.4: an IPC per Scheduled Procedure Step of one requested procedure (was AE 100 at IPC^2)."""
    two_steps = "IPC|ACC1|RP1|1.2.3|SPS1|CT\rIPC|ACC1|RP1|1.2.3|SPS2|MR"
    message = _TWO_OBR.replace("OBR|2|PL1|FPL2|CTNECK^CT neck^L", two_steps).replace("ORM^O01", "OMI^O23")
    steps = [{"scheduled_procedure_step_id": "SPS1", "modality": "CT"},
             {"scheduled_procedure_step_id": "SPS2", "modality": "MR"}]
    apply_records(db, orders_handler, [patient(), order("PL1", accession_number="ACC1", steps=steps)], message)

    assert [o.accession_number for o in _rows(db, orders)] == ["ACC1"]
    assert [(s.sps_id, s.modality) for s in _rows(db, procedure_steps)] == [("SPS1", "CT"), ("SPS2", "MR")]


def test_one_obr_in_each_of_two_orc_groups_is_two_procedures(db: Database, orders_handler: OrdersHandler) -> None:
    message = _TWO_OBR.replace("OBR|2|", "ORC|NW|PL2|FPL2||SC\rOBR|2|")
    apply_records(db, orders_handler, [patient(), order("PL1"), order("PL2")], message)
    assert len(_rows(db, procedure_steps)) == 2


def _outcomes(db: Database, handler: OrdersHandler, records: list[dict[str, Any]]) -> list[tuple[bool, str]]:
    from tests.domain.factories import context

    ctx = context(records)
    db.writer.call(lambda conn: handler.apply(conn, ctx))
    return [(o.changed, o.note) for o in ctx.outcomes]


@pytest.mark.parametrize("done", [("SC", "IP", "STARTED"), ("SC", "CM", "COMPLETED")])
def test_an_nw_replayed_after_the_exam_does_not_put_it_back_on_the_worklist(
    db: Database, orders_handler: OrdersHandler, done: tuple[str, str, str]
) -> None:
    """An interface engine replaying its queue resends the NW after MPPS or the RIS completed the exam: the step
    went back to SCHEDULED (AA, no note) and the modality was offered the exam again."""
    control, ris_status, status = done
    apply_records(db, orders_handler, [patient(), order("PL1")])
    apply_records(db, orders_handler, [order("PL1", order_control=control, order_status=ris_status)])

    outcomes = _outcomes(db, orders_handler, [order("PL1")])

    assert [s.status for s in _rows(db, procedure_steps)] == [status]
    assert outcomes == [(False, f"order placer PL1, filler FPL1: NW with ORC-5 'SC' left the step {status} "
                                "(an exam started or done is not scheduled again)")]


def test_an_xo_after_the_exam_corrects_the_order_and_keeps_the_step_completed(
    db: Database, orders_handler: OrdersHandler
) -> None:
    apply_records(db, orders_handler, [patient(), order("PL1")])
    apply_records(db, orders_handler, [order("PL1", order_control="SC", order_status="CM")])

    xo = order("PL1", order_control="XO", requested_procedure_description="CT HEAD WO")
    outcomes = _outcomes(db, orders_handler, [xo])

    assert [s.status for s in _rows(db, procedure_steps)] == ["COMPLETED"]
    assert [o.requested_procedure_description for o in _rows(db, orders)] == ["CT HEAD WO"]
    assert outcomes == [(True, "order placer PL1, filler FPL1: XO with ORC-5 'SC' left the step COMPLETED "
                                "(an exam started or done is not scheduled again)")]


@pytest.mark.parametrize(("control", "ended"), [("CA", "CANCELED"), ("DC", "DISCONTINUED")])
def test_an_nw_replayed_after_a_cancel_leaves_the_step_cancelled_and_says_so(
        db: Database, orders_handler: OrdersHandler, control: str, ended: str) -> None:
    """A placer order number names one order for good: an NW under a cancelled one is a replayed queue,
    and the worklist offered the cancelled exam to the modality again (new-user campaign)."""
    apply_records(db, orders_handler, [patient(), order("PL1")])
    apply_records(db, orders_handler, [order("PL1", order_control=control, order_status="")])
    outcomes = _outcomes(db, orders_handler, [order("PL1", requested_procedure_description="CT HEAD WO")])

    assert [s.status for s in _rows(db, procedure_steps)] == [ended]
    assert [o.requested_procedure_description for o in _rows(db, orders)] == ["CT HEAD WO"]  # content still applied
    assert outcomes == [(True, f"order placer PL1, filler FPL1: NW with ORC-5 'SC' left the step {ended} (a "
                               "cancelled order is not scheduled again; a new order has a new placer order "
                               "number (orders.reopen_cancelled: true allows it))")]
    assert _outcomes(db, orders_handler, [order("PL1", requested_procedure_description="CT HEAD WO")])[0][0] is False


def test_a_site_that_reinstates_orders_by_resending_them_can_reopen_a_cancelled_step(
        db: Database, engine_config: EngineConfig) -> None:
    handler = OrdersHandler(dataclasses.replace(order_policy(engine_config), reopen_cancelled=True))
    apply_records(db, handler, [patient(), order("PL1")])
    apply_records(db, handler, [order("PL1", order_control="CA", order_status="CA")])
    apply_records(db, handler, [order("PL1")])
    assert [s.status for s in _rows(db, procedure_steps)] == ["SCHEDULED"]


def test_an_omg_with_a_prior_result_obr_is_not_refused(db: Database, orders_handler: OrdersHandler) -> None:
    """OMG^O19's ORDER group may hold PRIOR_RESULT (PID, ORC, OBR of an earlier order): not a second procedure."""
    message = _TWO_OBR.replace("ORM^O01", "OMG^O19").replace("OBR|2|PL1|FPL2", "PID|1||P1^^^HOSP\rOBR|2|OLD1|FOLD1")
    apply_records(db, orders_handler, [patient(), order("PL1")], message)
    assert len(_rows(db, procedure_steps)) == 1


def test_an_omg_with_a_second_obr_outside_a_prior_result_is_refused(
        db: Database, orders_handler: OrdersHandler) -> None:
    """Only a PRIOR_RESULT (which starts with its PID) holds OBRs of other orders; a second OBR before one is
    a second procedure the mapping would drop, as in ORM^O01 (review finding on the OMG exemption)."""
    with pytest.raises(HL7ApplicationError) as err:
        apply_records(db, orders_handler, [patient(), order("PL1")], _TWO_OBR.replace("ORM^O01", "OMG^O19"))
    assert (err.value.code, str(err.value.location)) == (100, "OBR^2")
