"""The shipped mappings against real messages from ../shared/corpus/hl7 (skipped without it)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from engine.domain.records import RECORD_TYPES
from engine.errors import HL7ApplicationError, HL7Error
from engine.hl7.er7 import Message
from engine.mapping import load_mapping, load_mappings

from .conftest import CORPUS, MAPPINGS_DIR, corpus_message, write

MAPPINGS = load_mappings(MAPPINGS_DIR)
ORDERS = MAPPINGS["order-to-worklist"]
ADT = MAPPINGS["adt-to-patient"]



def orders(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The order records of a mapping result (the order mapping also yields the PID's patient)."""
    return [r for r in records if r["record"] == "order"]

def valid(records: list[dict[str, object]]) -> list[dict[str, object]]:
    for record in records:
        RECORD_TYPES[str(record["record"])].model_validate(record)
    return records


def test_omi_o23_reads_ipc() -> None:
    (order,) = orders(valid(ORDERS.apply(corpus_message("edge/dcm4che_OMI_O23-ImagingOrder.hl7")).records))
    assert order["accession_number"] == "AccessionNumber"
    assert order["requested_procedure_id"] == "RequestedProcID"
    assert order["study_instance_uid"] == "1.2.392.200036.9125.0.198811291108.7"
    assert order["scheduled_procedure_step_id"] == "ScheduledProcStepID"
    assert order["modality"] == "CT"
    assert order["scheduled_station_ae_title"] == "ScheduledStationAET1\\ScheduledStationAET2"
    assert order["scheduled_start"] == "20000816151000"
    assert order["referring_physician_name"].startswith("ReferringPhysicianFN^ReferringPhysicianGN")


def test_omg_o19_uses_zds_and_station_table() -> None:
    msg = corpus_message("edge/dcm4che_OMG_O19-GeneralClinicalOrder-Eyecare.hl7")
    (order,) = orders(valid(ORDERS.apply(msg).records))
    assert order["study_instance_uid"] and order["order_control"] == "NW"


def test_latin1_order_without_msh18_keeps_accents() -> None:
    msg = corpus_message("malformed/orthanctools_ORM_O01_NW_badMSH7_latin1.hl7")
    (order,) = orders(valid(ORDERS.apply(msg).records))
    assert order["patient_id"] == "1234567" and order["modality"] == "CT"


@pytest.mark.parametrize(
    "name",
    ["valid/fhirconv_ORM-O01-01.hl7", "valid/hapi_ORM_O01_v22_NW_CT_biopsy.hl7"],
)
def test_orders_without_accession_leave_it_to_the_engine(name: str) -> None:
    (record,) = orders(ORDERS.apply(corpus_message(name)).records)
    assert record["accession_number"] == "" and record["patient_id"]


def test_contradictory_control_and_status_is_103_at_orc_1() -> None:
    with pytest.raises(HL7ApplicationError) as info:
        ORDERS.apply(corpus_message("valid/fhirconv_ORM-O01-05.hl7"))
    assert (info.value.code, str(info.value.location)) == (103, "ORC^1^1")


def test_a40_yields_patient_and_merge() -> None:
    records = valid(ADT.apply(corpus_message("valid/dcm4che_ADT_A40-PatientMerge.hl7")).records)
    merge = next(r for r in records if r["record"] == "merge")
    assert (merge["patient_id"], merge["prior_patient_id"], merge["kind"]) == (
        "NEW_PID_1",
        "OLD_PID_1",
        "merge",
    )
    patient = next(r for r in records if r["record"] == "patient")
    assert patient["patient_name"] == "New_Smith^Lucy^Mark"


def test_a40_v28() -> None:
    records = valid(ADT.apply(corpus_message("valid/fhirconv_ADT-A40-01.hl7")).records)
    assert [(r["record"], r["patient_id"]) for r in records] == [
        ("patient", "12345"),
        ("merge", "12345"),
    ]


def test_a47_is_a_change_of_id() -> None:
    records = valid(ADT.apply(corpus_message("valid/fhirconv_ADT-A47-01.hl7")).records)
    merge = next(r for r in records if r["record"] == "merge")
    assert (merge["kind"], merge["prior_patient_id"], merge["prior_issuer"]) == (
        "change_id",
        "MR102",
        "BCBS",
    )


@pytest.mark.parametrize("name", ["valid/fhirconv_ADT-A08-01.hl7", "valid/fhirconv_ADT-A08-02.hl7"])
def test_a08_updates_the_patient(name: str) -> None:
    (patient,) = valid(ADT.apply(corpus_message(name)).records)
    assert patient["event"] == "A08" and patient["patient_id"] == "PATID1234"
    assert patient["patient_name"] == "EVERYMAN^ADAM^A^Dr.^III"
    assert patient["other_ids"] == [
        {"patient_id": "123456789", "issuer": "USSSA", "type_of_id": "SS"}
    ]


def test_order_then_mwl_builds_a_dataset() -> None:
    from engine.mapping.targets import to_dataset

    (order,) = orders(ORDERS.apply(corpus_message("edge/dcm4che_OMI_O23-ImagingOrder.hl7")).records)
    (item,) = MAPPINGS["order-to-mwl"].apply_to({"order": order, "patient": {}}).records
    ds = to_dataset(item)
    sps = ds.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledProcedureStepStatus == "SCHEDULED" and sps.Modality == "CT"
    assert list(sps.ScheduledStationAETitle) == ["ScheduledStation", "ScheduledStation"]


def test_two_order_groups_in_one_corpus_message(tmp_path: Path) -> None:
    text = (
        "source: hl7v2\ntarget: record\noutputs:\n  - record: order\n    for_each: ORC\n"
        "    fields:\n      order_control: ORC-1\n      patient_id: PID-3.1\n"
        "      placer_order_number: ORC-4.1\n      universal_service_id: OBR-4.1\n"
    )
    mapping = load_mapping(write(tmp_path, "two.yaml", text))
    records = valid(mapping.apply(corpus_message("valid/fhirconv_OMG-O19-01.hl7")).records)
    assert [r["placer_order_number"] for r in records] == [
        "9adf2339de714c6698063e3ddf5d07&L",
        "9adf2339de714c6698063e3ddf5167",
    ]
    # The shipped order mapping refuses this lab order: SC+HD is not an imaging step status.
    with pytest.raises(HL7ApplicationError) as info:
        ORDERS.apply(corpus_message("valid/fhirconv_OMG-O19-01.hl7"))
    assert (info.value.code, str(info.value.location)) == (103, "ORC^1^1")


def test_order_whose_patient_id_is_only_in_pid_2_is_read_with_it() -> None:
    """A veterinary practice system's order (Orthanc tools sample): PID-2 1932, PID-3 empty. It was
    AE 101 at PID-3.1; PID-2 is the patient id of v2.2/2.3 feeds when PID-3 has none."""
    records = ORDERS.apply(corpus_message("edge/orthanctools_ORM_O01_missing_birthdate.hl7")).records
    assert [(r["record"], r["patient_id"]) for r in records] == [("patient", "1932"), ("order", "1932")]


def test_order_without_patient_id_is_refused_at_pid_3() -> None:
    text = corpus_message("edge/orthanctools_ORM_O01_missing_birthdate.hl7").text.replace("PID|1|1932|", "PID|1||")
    with pytest.raises(HL7ApplicationError) as info:
        ORDERS.apply(Message(text))
    assert (info.value.code, str(info.value.location)) == (101, "PID^1^3^1")


def _corpus_files() -> list[str]:
    root = CORPUS / "hl7"
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*.hl7")) if root.is_dir() else []


@pytest.mark.parametrize("name", _corpus_files() or ["(corpus absent)"])
def test_every_corpus_message_maps_or_is_refused_cleanly(name: str) -> None:
    """Whatever arrives, a mapping answers with records or an HL7 error, never a crash."""
    if name == "(corpus absent)":
        corpus_message("absent")
    message = corpus_message(name)
    for mapping in MAPPINGS.values():
        if mapping.source != "hl7v2":
            continue
        with contextlib.suppress(HL7Error):
            valid(mapping.apply(message).records)
