"""The steps of one order record (engine.domain.steps): views, SPS IDs, duplicates."""

from __future__ import annotations

import pytest

from engine.domain.records import OrderRecord, StepRecord
from engine.domain.steps import assign_sps_ids, check_distinct, step_views
from engine.errors import HL7ApplicationError


def _order(*sps_ids: str) -> OrderRecord:
    steps = [StepRecord(scheduled_procedure_step_id=s, modality=f"M{n}") for n, s in enumerate(sps_ids)]
    return OrderRecord(order_control="NW", modality="CT", scheduled_procedure_step_id="X", steps=steps)


def test_an_order_without_steps_is_its_own_one_step() -> None:
    record = OrderRecord(order_control="NW", scheduled_procedure_step_id="S1")
    assert step_views(record) == [record]


def test_each_step_view_has_the_steps_fields_and_the_orders_others() -> None:
    views = step_views(_order("A", "B").model_copy(update={"accession_number": "ACC"}))
    assert [(v.scheduled_procedure_step_id, v.modality, v.accession_number, v.steps) for v in views] == [
        ("A", "M0", "ACC", []), ("B", "M1", "ACC", [])]


def test_steps_without_sps_id_get_the_rp_id_then_numbered_ids() -> None:
    assert assign_sps_ids(step_views(_order("", "", "")), "RP") == ["RP", "RP.2", "RP.3"]


def test_generated_sps_ids_skip_the_ids_the_message_gives() -> None:
    assert assign_sps_ids(step_views(_order("", "RP.2", "", "RP")), "RP") == ["RP.3", "RP.2", "RP.4", "RP"]


def test_a_repeated_sps_id_is_ae_205_at_the_repeating_ipcs_field_4() -> None:
    with pytest.raises(HL7ApplicationError) as err:
        check_distinct(_order("A", "", "A"), (4, 5, 6), sequence=2)
    assert (err.value.code, str(err.value.location)) == (205, "IPC^6^4")


def test_steps_without_sps_ids_are_not_duplicates() -> None:
    check_distinct(_order("", ""), ())


def test_a_station_ae_title_list_is_joined_with_backslashes() -> None:
    assert StepRecord.model_validate({"scheduled_station_ae_title": ["A", "B"]}).scheduled_station_ae_title == "A\\B"
