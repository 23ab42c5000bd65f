"""Issue #11, order path: nothing is acknowledged and then dropped without a word.

Follow-ups find their order by its HL7 identity; an order whose modality cannot be
determined is refused; non-imaging is only what the site listed; every record that
changes nothing says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine.config.models import EngineConfig
from engine.domain.handlers import OrdersHandler, order_policy
from engine.domain.order_kind import DEFAULT_NON_IMAGING_SECTIONS, load_non_imaging
from engine.domain.tables import orders, procedure_steps, step_station_aes
from engine.errors import ConfigError, HL7ApplicationError
from engine.store.database import Database

from .factories import context, order, patient

NS = {"placer_order_namespace": "RIS", "filler_order_namespace": "PACS"}


def _rows(db: Database, table: Any) -> list[Any]:
    return db.read(lambda c: c.execute(select(table).order_by(*table.primary_key.columns)).all())


def _apply(db: Database, handler: OrdersHandler, records: list[dict[str, Any]]) -> list[tuple[bool, str]]:
    ctx = context(records)
    db.writer.call(lambda conn: handler.apply(conn, ctx))
    return [(o.changed, o.note) for o in ctx.outcomes]


def _bare(control: str, placer: str = "PL1", status: str = "", **fields: Any) -> dict[str, Any]:
    """A follow-up as real RIS cancels send it: ORC and a minimal OBR, nothing else."""
    return {"record": "order", "order_control": control, "order_status": status, "patient_id": "P1",
            "issuer": "HOSP", "placer_order_number": placer, **fields}  # fmt: skip


def _stored(db: Database, handler: OrdersHandler) -> None:
    _apply(db, handler, [patient(), order("PL1", accession_number="ACC1", requested_procedure_id="RP1",
                                          scheduled_procedure_step_id="SPS1", **NS)])  # fmt: skip


def test_cancel_with_only_the_placer_number_and_empty_orc_5_cancels_the_order(
    db: Database, orders_handler: OrdersHandler
) -> None:
    _stored(db, orders_handler)
    assert _apply(db, orders_handler, [_bare("CA", placer_order_namespace="RIS")]) == [(True, "")]
    assert [s.status for s in _rows(db, procedure_steps)] == ["CANCELED"]


@pytest.mark.parametrize("status", ["", "CA"])
def test_canceled_as_requested_cancels_as_a_cancel_does(
    db: Database, orders_handler: OrdersHandler, status: str
) -> None:
    """CR (table 0119 'canceled as requested', the filler's answer to a CA) was AE 103 at ORC-1: the
    worklist kept an exam the filler had cancelled."""
    _stored(db, orders_handler)
    assert _apply(db, orders_handler, [_bare("CR", status=status, placer_order_namespace="RIS")]) == [(True, "")]
    assert [s.status for s in _rows(db, procedure_steps)] == ["CANCELED"]


@pytest.mark.parametrize("control", ["HD", "RL", "OH", "OR"])
def test_hold_and_release_are_refused_at_orc_1_and_change_nothing(
    db: Database, orders_handler: OrdersHandler, control: str
) -> None:
    """DICOM has no held step: hold (HD, OH) and release (RL, OR) are refused, AE 103 at ORC-1, never a
    silent AA; a site that wants them adds rows to order_control_status.csv (docs/mapping.md)."""
    _stored(db, orders_handler)
    with pytest.raises(HL7ApplicationError) as info:
        _apply(db, orders_handler, [_bare(control, placer_order_namespace="RIS")])
    assert (info.value.code, str(info.value.location)) == (103, "ORC^1^1")
    assert [s.status for s in _rows(db, procedure_steps)] == ["SCHEDULED"]


def test_discontinue_found_by_the_filler_number_alone(db: Database, orders_handler: OrdersHandler) -> None:
    _stored(db, orders_handler)
    _apply(db, orders_handler, [_bare("DC", placer="", filler_order_number="FPL1", filler_order_namespace="PACS")])
    assert [s.status for s in _rows(db, procedure_steps)] == ["DISCONTINUED"]


def test_a_follow_up_from_another_namespace_is_not_this_order(db: Database, orders_handler: OrdersHandler) -> None:
    _stored(db, orders_handler)
    with pytest.raises(HL7ApplicationError) as refused:
        _apply(db, orders_handler, [_bare("CA", placer_order_namespace="OTHER")])
    assert refused.value.code == 204 and str(refused.value.location) == "ORC^1^2"
    assert "PL1^OTHER" in refused.value.text
    assert [s.status for s in _rows(db, procedure_steps)] == ["SCHEDULED"]


def test_a_given_sps_id_picks_its_step_among_the_placer_orders_steps(
    db: Database, orders_handler: OrdersHandler
) -> None:
    _apply(db, orders_handler, [order("PL1", scheduled_procedure_step_id="S1", requested_procedure_id="R1"),
                                order("PL1", scheduled_procedure_step_id="S2", requested_procedure_id="R2")])
    _apply(db, orders_handler, [_bare("CA", scheduled_procedure_step_id="S2")])
    assert [s.status for s in _rows(db, procedure_steps)] == ["SCHEDULED", "CANCELED"]
    _apply(db, orders_handler, [_bare("CA")])  # no ids: the whole placer order
    assert [s.status for s in _rows(db, procedure_steps)] == ["CANCELED", "CANCELED"]


def test_two_procedures_under_one_placer_number_stay_two_orders(
    db: Database, orders_handler: OrdersHandler
) -> None:
    """One ORC-2 for two procedures, told apart only by their accession numbers (no OBR-19/20)."""
    groups = [order("PL1", accession_number=acc, requested_procedure_id=acc, scheduled_procedure_step_id=acc)
              for acc in ("ACC1", "ACC2")]  # fmt: skip
    _apply(db, orders_handler, groups)
    assert sorted(o.accession_number for o in _rows(db, orders)) == ["ACC1", "ACC2"]
    _apply(db, orders_handler, [_bare("CA", accession_number="ACC2")])
    assert [s.status for s in _rows(db, procedure_steps)] == ["SCHEDULED", "CANCELED"]


@pytest.mark.parametrize("control", ["XO", "XX"])
def test_an_xo_that_changes_the_accession_updates_its_order_named_by_the_senders_ids(
    db: Database, orders_handler: OrdersHandler, control: str
) -> None:
    """PIR campaign: an XO with the order's placer number, Requested Procedure ID and SPS ID but a new
    accession number (the RIS corrected it) is that order's update, not a second order beside it (the
    worklist kept both and the stored images were never corrected). XX (table 0119 'changed as
    requested', the filler's answer to an XO, as a RIS sends it on) is the same update: AE 103 before."""
    _stored(db, orders_handler)
    xo = order("PL1", order_control=control, accession_number="ACC1X", requested_procedure_id="RP1",
               scheduled_procedure_step_id="SPS1", requested_procedure_description="CT NECK", **NS)
    assert _apply(db, orders_handler, [xo]) == [(True, "")]
    assert [(o.accession_number, o.requested_procedure_description) for o in _rows(db, orders)] == [
        ("ACC1X", "CT NECK")]
    assert len(_rows(db, procedure_steps)) == 1


def test_with_generated_accessions_a_follow_up_carrying_the_ris_accession_still_matches(
    db: Database, engine_config: EngineConfig
) -> None:
    cfg = engine_config.model_copy(update={"orders": engine_config.orders.model_copy(
        update={"accession_policy": "always_generate"})})  # fmt: skip
    handler = OrdersHandler(order_policy(cfg))
    _apply(db, handler, [order("PL1", accession_number="RIS-ACC")])
    generated = _rows(db, orders)[0].accession_number
    assert generated != "RIS-ACC"
    _apply(db, handler, [_bare("XO", status="SC", accession_number="RIS-ACC", scheduled_start="202611230800")])
    assert _rows(db, orders)[0].accession_number == generated  # an XO does not put the RIS's number back
    _apply(db, handler, [_bare("CA", accession_number="RIS-ACC")])
    assert [s.status for s in _rows(db, procedure_steps)] == ["CANCELED"]


def test_ids_the_mapping_copied_from_the_accession_do_not_hide_the_order(
    db: Database, orders_handler: OrdersHandler
) -> None:
    """A cancel with OBR-18 but no OBR-19/20: the mapping copies the accession into both ids."""
    _stored(db, orders_handler)
    copied = {"accession_number": "ACC1", "requested_procedure_id": "ACC1", "scheduled_procedure_step_id": "ACC1"}
    _apply(db, orders_handler, [_bare("XO", status="SC", **copied)])
    assert _rows(db, orders)[0].requested_procedure_id == "RP1"  # not overwritten by the copy
    _apply(db, orders_handler, [_bare("CA", **copied)])
    assert [s.status for s in _rows(db, procedure_steps)] == ["CANCELED"]


def test_fields_absent_from_a_follow_up_keep_their_stored_values(
    db: Database, orders_handler: OrdersHandler
) -> None:
    _stored(db, orders_handler)
    before_order, before_step = _rows(db, orders)[0], _rows(db, procedure_steps)[0]
    _apply(db, orders_handler, [_bare("XO", status="SC", requested_procedure_description="CT HEAD W/O")])
    after_order, after_step = _rows(db, orders)[0], _rows(db, procedure_steps)[0]
    assert after_order.requested_procedure_description == "CT HEAD W/O"
    keep = ("accession_number", "requested_procedure_id", "study_instance_uid", "procedure_code_value",
            "placer_order_namespace", "filler_order_number", "priority")
    assert [getattr(after_order, k) for k in keep] == [getattr(before_order, k) for k in keep]
    keep = ("modality", "scheduled_station_ae_title", "start_datetime", "description", "sps_id")
    assert [getattr(after_step, k) for k in keep] == [getattr(before_step, k) for k in keep]
    assert [a.ae_title for a in _rows(db, step_station_aes)] == ["CT1"]


def test_resent_minimal_nw_finds_the_order_instead_of_refusing_or_duplicating(
    db: Database, orders_handler: OrdersHandler
) -> None:
    _stored(db, orders_handler)
    _apply(db, orders_handler, [_bare("NW", status="SC")])
    assert len(_rows(db, orders)) == 1 and _rows(db, orders)[0].accession_number == "ACC1"


def test_what_changed_nothing_says_why(db: Database, orders_handler: OrdersHandler) -> None:
    _stored(db, orders_handler)
    resent = order("PL1", accession_number="ACC1", requested_procedure_id="RP1", scheduled_procedure_step_id="SPS1",
                   **NS)  # fmt: skip
    assert _apply(db, orders_handler, [resent]) == [
        (False, "order placer PL1^RIS, filler FPL1^PACS: NW changed nothing (resent, identical to the stored order)")
    ]
    _apply(db, orders_handler, [_bare("CA")])
    assert _apply(db, orders_handler, [_bare("CA")]) == [
        (False, "order placer PL1: CA changed nothing (the step is already CANCELED)")
    ]


def test_order_of_unknown_modality_is_ae_103_at_its_obr_4_and_nothing_is_stored(
    db: Database, orders_handler: OrdersHandler
) -> None:
    """The "MR Brain" with a standard LOINC code, second order of its message (issue #11)."""
    mr_brain = order("PL2", modality="", scheduled_station_ae_title="",
                     requested_procedure_code={"code_value": "24590-2", "coding_scheme_designator": "LN"})
    with pytest.raises(HL7ApplicationError) as refused:
        _apply(db, orders_handler, [patient(), order("PL1"), mr_brain])
    assert refused.value.code == 103 and str(refused.value.location) == "OBR^2^4"
    assert refused.value.text == (
        "order placer PL2, filler FPL2: cannot tell the modality: OBR-24 empty, procedure code '24590-2' (LN) "
        "is not in procedure_codes.csv (imaging) nor in non_imaging.csv (non-imaging)")
    assert _rows(db, orders) == []


def test_an_obr_24_nobody_knows_is_ae_103_at_obr_24(db: Database, orders_handler: OrdersHandler) -> None:
    with pytest.raises(HL7ApplicationError) as refused:
        _apply(db, orders_handler, [order("PL1", modality="ZZ", diagnostic_service_section="ZZ")])
    assert refused.value.code == 103 and str(refused.value.location) == "OBR^1^24"
    assert "OBR-24 'ZZ' is not a modality (orders.imaging_modalities, modality_aliases.csv)" in refused.value.text


def test_cancel_of_an_imaging_order_without_modality_is_applied(
    db: Database, orders_handler: OrdersHandler
) -> None:
    """Before, an x-ray cancel with no OBR-24 was classed non-imaging and dropped."""
    _apply(db, orders_handler, [order("PL1", modality="CR")])
    assert _apply(db, orders_handler, [_bare("CA", status="CA", universal_service_id="CXR2")]) == [(True, "")]
    assert [s.status for s in _rows(db, procedure_steps)] == ["CANCELED"]


def test_listed_non_imaging_orders_are_ignored_with_a_note(db: Database, orders_handler: OrdersHandler) -> None:
    lab = order("LAB1", modality="LAB", diagnostic_service_section="LAB")
    assert _apply(db, orders_handler, [lab]) == [(False, (
        "order placer LAB1, filler FLAB1: not an imaging order (OBR-24 'LAB' in non_imaging.csv), "
        "ignored (orders.non_imaging: ignore)"))]
    assert _rows(db, orders) == []


def test_the_site_table_marks_procedure_codes_and_sections_non_imaging(
    db: Database, engine_config: EngineConfig
) -> None:
    tables = engine_config.mappings_dir / "tables"
    tables.mkdir(parents=True)
    (tables / "non_imaging.csv").write_text("field,code,description\nOBR-24,ZLAB,ours\nOBR-4,GLU,glucose\n")
    handler = OrdersHandler(order_policy(engine_config))
    glucose = order("G1", modality="", requested_procedure_code={"code_value": "GLU"})
    notes = _apply(db, handler, [glucose, order("Z1", modality="ZLAB")])
    assert [changed for changed, _ in notes] == [False, False]
    assert "(OBR-4 'GLU' in non_imaging.csv)" in notes[0][1] and "(OBR-24 'ZLAB' in" in notes[1][1]
    assert _rows(db, orders) == []
    with pytest.raises(HL7ApplicationError):  # LAB is not in this site's table: unknown, not non-imaging
        _apply(db, handler, [order("L1", modality="LAB")])


def test_non_imaging_table_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "non_imaging.csv"
    path.write_text("field,code\nOBR-24,LAB\nPV1-2,I\n")
    with pytest.raises(ConfigError) as bad:
        load_non_imaging(path)
    assert bad.value.problems == [f"{path}:3: field 'PV1-2' is not one of OBR-24, OBR-4, segment"]
    assert load_non_imaging(tmp_path / "missing.csv").sections == DEFAULT_NON_IMAGING_SECTIONS


def test_pharmacy_diet_and_supply_order_groups_are_non_imaging(db: Database, orders_handler: OrdersHandler) -> None:
    groups = [order(f"X{seg}", modality="", requested_procedure_code=None, order_detail_segment=seg)
              for seg in ("RXO", "ODS", "RQD")]  # fmt: skip
    notes = _apply(db, orders_handler, groups)
    assert [changed for changed, _ in notes] == [False] * 3 and "(segment RXO in non_imaging.csv)" in notes[0][1]
    with pytest.raises(HL7ApplicationError):  # an OBR group of unknown modality stays unknown
        _apply(db, orders_handler, [order("Y", modality="", requested_procedure_code=None, order_detail_segment="OBR")])


def test_shipped_non_imaging_table_loads_and_leaves_dicom_modalities_out() -> None:
    shipped = load_non_imaging(Path(__file__).parents[2] / "mappings" / "tables" / "non_imaging.csv")
    assert "LAB" in shipped.sections and "2345-7" in shipped.procedure_codes and "RXO" in shipped.segments
    assert not shipped.sections & {"CT", "PT", "OT", "MR", "US", "NM", "CR", "DX"}


def test_procedures_of_one_placer_number_each_with_sps_id_1_stay_apart(
    db: Database, orders_handler: OrdersHandler
) -> None:
    """SPS IDs are unique within a Requested Procedure only: an order whose OBRs each give SPS ID "1" (and
    their own accessions) is two procedures, not one updated by the other (review of the XO change)."""
    groups = [order("PL1", accession_number=acc, requested_procedure_id=acc, scheduled_procedure_step_id="1", **NS)
              for acc in ("ACC1", "ACC2")]
    _apply(db, orders_handler, groups)
    assert sorted((o.accession_number, o.requested_procedure_id) for o in _rows(db, orders)) == [
        ("ACC1", "ACC1"), ("ACC2", "ACC2")]
    xo = order("PL1", order_control="XO", accession_number="ACC2X", requested_procedure_id="ACC2",
               scheduled_procedure_step_id="1", **NS)
    _apply(db, orders_handler, [xo])  # names its procedure by RP ID: that order's accession is corrected
    assert sorted(o.accession_number for o in _rows(db, orders)) == ["ACC1", "ACC2X"]


@pytest.mark.parametrize("control", ["XO", "XX"])
def test_an_xo_naming_its_order_by_placer_number_alone_changes_the_accession(
    db: Database, orders_handler: OrdersHandler, control: str
) -> None:
    """hl7fix5: an XO with only the placer number (no Requested Procedure ID or SPS ID of its own) and a
    corrected accession made a second order beside the first; it updates the one order instead."""
    _apply(db, orders_handler, [patient(), order("PL1", accession_number="ACC1", placer_order_namespace="RIS")])
    xo = _bare(control, "PL1", "SC", accession_number="ACC1X", placer_order_namespace="RIS",
               requested_procedure_description="CT NECK", modality="CT")
    assert _apply(db, orders_handler, [xo]) == [(True, "")]
    assert [(o.placer_order_number, o.accession_number, o.requested_procedure_description)
            for o in _rows(db, orders)] == [("PL1", "ACC1X", "CT NECK")]
    assert len(_rows(db, procedure_steps)) == 1


def test_an_xo_with_a_new_accession_under_another_placer_namespace_is_not_that_order(
    db: Database, orders_handler: OrdersHandler
) -> None:
    _apply(db, orders_handler, [patient(), order("PL1", accession_number="ACC1", placer_order_namespace="RIS")])
    _apply(db, orders_handler, [_bare("XO", "PL1", "SC", accession_number="ACC9", placer_order_namespace="EHR",
                                      modality="CT")])
    assert sorted(o.accession_number for o in _rows(db, orders)) == ["ACC1", "ACC9"]


def test_an_xo_with_a_new_accession_for_a_placer_number_of_several_orders_is_refused(
    db: Database, orders_handler: OrdersHandler
) -> None:
    """Two procedures under one placer number: an XO naming neither by its ids nor by accession cannot say
    whose accession it corrects. AE 205 naming why, and no third order."""
    groups = [order("PL1", accession_number=acc, requested_procedure_id=acc, scheduled_procedure_step_id=acc)
              for acc in ("ACC1", "ACC2")]
    _apply(db, orders_handler, [patient(), *groups])
    with pytest.raises(HL7ApplicationError) as refused:
        _apply(db, orders_handler, [_bare("XO", "PL1", "SC", accession_number="ACC3", modality="CT")])
    assert refused.value.code == 205 and "ambiguous order identity" in str(refused.value)
    assert str(refused.value.location) == "ORC^1^2"
    assert sorted(o.accession_number for o in _rows(db, orders)) == ["ACC1", "ACC2"]
