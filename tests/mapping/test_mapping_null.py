"""The HL7 explicit null ``""`` in the mapping layer (engine.mapping.null, docs/mapping.md "Explicit null").

Every case is mapped twice, by the interpreter (with provenance) and by the generated
code (the receive path), which must agree, ``cleared`` included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.errors import ConfigError, HL7ApplicationError
from engine.hl7.er7 import Message, Separators
from engine.mapping import CompiledMapping, load_mapping
from engine.mapping.evaluate import BoundTransform
from engine.mapping.null import NULL, Null
from engine.mapping.paths import parse_hl7_path, read_repetition
from engine.mapping.transforms import TransformContext, get_transform, transform_names

from .conftest import MAPPINGS_DIR, write

SEPS = Separators()
MAPPING = """\
source: hl7v2
target: record
accept: [ADT^A08]
outputs:
  - record: order
    vars:
      status: ZZZ-9
    fields:
      order_control: {const: NW}
      patient_id: {const: P1}
      order_status: {path: ZZZ-1, transform: [trim, upper]}
      placer_order_number: {path: ZZZ-2, transform: [ts_to_da]}
      filler_order_number: {path: ZZZ-3, transform: [xpn_to_pn]}
      accession_number: {path: ZZZ-4, table: {name: sex, on_missing: error}}
      modality: {path: ZZZ-5, default: OT}
      requested_procedure_id: [ZZZ-6, ZZZ-7]
      scheduled_station_ae_title: ZZZ-8(*)
      scheduled_station_name: $status
      scheduled_procedure_step_location: ZZZ-10.2
      requesting_physician: {path: ZZZ-11, transform: [xcn_to_pn]}
      scheduled_procedure_step_description: {first: [ZZZ-12, {path: ZZZ-13, transform: [upper]}]}
      admission_id: ZZZ-14(2)
      requested_procedure_code:
        fields:
          code_value: ZZZ-15.1
          code_meaning: ZZZ-15.2
"""
MSH = "MSH|^~\\&|PAS|H|RB|H|20260101||ADT^A08|1|P|2.5.1\r"


@pytest.fixture(scope="module")
def mapping(tmp_path_factory: pytest.TempPathFactory) -> CompiledMapping:
    root = tmp_path_factory.mktemp("null")
    write(root, "tables/sex.csv", (MAPPINGS_DIR / "tables" / "sex.csv").read_text(encoding="utf-8"))
    return load_mapping(write(root, "null.yaml", MAPPING))


def zzz(mapping: CompiledMapping, **fields: str) -> dict[str, Any]:
    """The order record of a message whose ZZZ segment holds ``fields`` (``f4="..."``); both evaluators agree."""
    values = [""] * 16
    for name, value in fields.items():
        values[int(name[1:])] = value
    message = Message(MSH + "|".join(["ZZZ", *values[1:]]) + "\r")
    interpreted = mapping.apply(message).records
    generated = mapping.apply(message, provenance=False).records
    assert generated == interpreted
    assert [r.get("cleared") for r in generated] == [r.get("cleared") for r in interpreted]
    return interpreted[0]


# Reading paths

@pytest.mark.parametrize(("rep", "comp", "sub", "expected"), [
    ('""', None, None, NULL), ('""', 1, None, NULL), ('""', 2, None, NULL), ('""', 2, 1, NULL),
    ('A^""', 2, None, NULL), ('A^""', 1, None, "A"), ('A^""^C', 2, 2, NULL), ('A^B&""', 2, 2, NULL),
    ("", None, None, ""), ("A", 2, None, ""), ('"" ', None, None, '"" '), ('a""b', None, None, 'a""b'),
    ('"', None, None, '"'), ('""""', None, None, '""""'),
])  # fmt: skip
def test_read_repetition_reads_only_a_whole_double_quote_pair_as_null(
    rep: str, comp: int | None, sub: int | None, expected: str
) -> None:
    found = read_repetition(rep, SEPS, comp, sub)
    assert found == expected and (found is NULL) == (expected is NULL)


def test_a_null_component_is_null_and_its_siblings_are_values() -> None:
    path = parse_hl7_path("PID-5.2")
    assert path.first(Message(MSH + 'PID|||||A^""^C\r').all("PID")) is NULL
    assert parse_hl7_path("PID-5.3").first(Message(MSH + 'PID|||||A^""^C\r').all("PID")) == "C"


def test_null_is_one_value_equal_to_empty_and_falsy() -> None:
    assert Null() is NULL and NULL == "" and not NULL and repr(NULL) == "NULL"


# Rules

def test_empty_absent_and_null_are_three_things(mapping: CompiledMapping) -> None:
    assert zzz(mapping, f1='""')["cleared"] == ["order_status"]
    assert "cleared" not in zzz(mapping, f1="")
    assert "cleared" not in zzz(mapping)
    assert zzz(mapping, f1='""')["order_status"] == ""


@pytest.mark.parametrize("field", ["f1", "f2", "f3", "f11"])
def test_a_null_passes_every_transform_untouched(mapping: CompiledMapping, field: str) -> None:
    assert zzz(mapping, **{field: '""'})["cleared"]  # ts_to_da would refuse the text '""' with 102


def test_a_null_passes_a_table_even_when_a_miss_is_an_error(mapping: CompiledMapping) -> None:
    record = zzz(mapping, f4='""')
    assert (record["accession_number"], record["cleared"]) == ("", ["accession_number"])
    with pytest.raises(HL7ApplicationError):
        mapping.apply(Message(MSH + "ZZZ||||XX\r"))


def test_default_fills_a_null_like_an_empty_value(mapping: CompiledMapping) -> None:
    record = zzz(mapping, f5='""')
    assert record["modality"] == "OT" and "cleared" not in record


def test_a_value_in_a_fallback_wins_over_a_null(mapping: CompiledMapping) -> None:
    assert zzz(mapping, f6='""', f7="RP7")["requested_procedure_id"] == "RP7"
    assert zzz(mapping, f6='""')["cleared"] == ["requested_procedure_id"]
    assert zzz(mapping, f7='""')["cleared"] == ["requested_procedure_id"]


def test_first_rules_fall_back_like_paths(mapping: CompiledMapping) -> None:
    assert zzz(mapping, f12='""', f13="ct")["scheduled_procedure_step_description"] == "CT"
    assert zzz(mapping, f12='""')["cleared"] == ["scheduled_procedure_step_description"]
    assert zzz(mapping, f13='""')["cleared"] == ["scheduled_procedure_step_description"]


def test_null_repetitions_are_dropped_and_only_nulls_are_null(mapping: CompiledMapping) -> None:
    assert zzz(mapping, f8='CT1~""~CT2')["scheduled_station_ae_title"] == "CT1\\CT2"
    assert zzz(mapping, f8='""')["cleared"] == ["scheduled_station_ae_title"]
    assert zzz(mapping, f8='""~""')["cleared"] == ["scheduled_station_ae_title"]
    assert zzz(mapping, f14='A~""')["cleared"] == ["admission_id"]
    assert "cleared" not in zzz(mapping, f14='""~B')


def test_a_variable_keeps_a_null(mapping: CompiledMapping) -> None:
    assert zzz(mapping, f9='""')["cleared"] == ["scheduled_station_name"]


def test_a_component_of_a_null_field_is_null(mapping: CompiledMapping) -> None:
    assert zzz(mapping, f10='""')["cleared"] == ["scheduled_procedure_step_location"]
    assert zzz(mapping, f10='A^""')["cleared"] == ["scheduled_procedure_step_location"]
    assert "cleared" not in zzz(mapping, f10="A")


def test_null_components_of_a_name_are_empty_in_the_rebuilt_name(mapping: CompiledMapping) -> None:
    record = zzz(mapping, f3='Doe^""^Ann', f11='77^Doe^""^Ann')
    assert (record["filler_order_number"], record["requesting_physician"]) == ("Doe^^Ann", "Doe^^Ann")
    assert "cleared" not in record


def test_cleared_lists_top_level_fields_only(mapping: CompiledMapping) -> None:
    record = zzz(mapping, f15='""')
    assert "cleared" not in record and record["requested_procedure_code"] is None


def test_provenance_says_the_value_was_null(mapping: CompiledMapping) -> None:
    result = mapping.apply(Message(MSH + 'ZZZ||""\r'))
    found = next(p for p in result.provenance if p.target == "placer_order_number")
    assert (found.source, found.value) == ("ZZZ-2 (null)", NULL)


def test_required_refuses_a_null_with_101(tmp_path: Path) -> None:
    text = MAPPING.replace("{const: NW}", "{path: ZZZ-1, required: true}")
    write(tmp_path, "tables/sex.csv", (MAPPINGS_DIR / "tables" / "sex.csv").read_text(encoding="utf-8"))
    required = load_mapping(write(tmp_path, "r.yaml", text))
    for provenance in (True, False):
        with pytest.raises(HL7ApplicationError) as refused:
            required.apply(Message(MSH + 'ZZZ|""\r'), provenance=provenance)
        assert (refused.value.code, str(refused.value.location)) == (101, "ZZZ^1^1")


def test_cleared_is_not_a_field_a_file_may_map(tmp_path: Path) -> None:
    text = "source: hl7v2\ntarget: record\noutputs:\n  - record: patient\n    fields:\n" \
           "      patient_id: PID-3.1\n      cleared: PID-5\n"
    with pytest.raises(ConfigError, match="cleared"):
        load_mapping(write(tmp_path, "c.yaml", text))


def _args(name: str) -> tuple[Any, ...]:
    return {"replace": ("a", "b"), "component": (1,), "prefix": ("X",)}.get(name, ())


@pytest.mark.parametrize("name", transform_names())
def test_every_registered_transform_passes_a_null(name: str) -> None:
    found = get_transform(name)
    assert found is not None
    bound = BoundTransform(found, _args(name), TransformContext(SEPS, ZoneInfo("UTC")))
    assert bound.apply(NULL, SEPS) is NULL


def test_a_dicom_output_passes_a_null_on_for_the_coercion(tmp_path: Path) -> None:
    text = "source: hl7v2\ntarget: dicom\noutputs:\n  - fields:\n      PatientBirthDate: PID-7\n"
    out = load_mapping(write(tmp_path, "d.yaml", text)).apply(Message(MSH + 'PID|||||||""\r')).records[0]
    assert out["PatientBirthDate"] is NULL


def test_a_record_source_reads_a_null_it_is_given(tmp_path: Path) -> None:
    text = ("source: record\ntarget: dicom\noutputs:\n  - fields:\n"
            "      PatientBirthDate: patient.birth_date\n      PatientSex: {path: patient.sex, transform: [upper]}\n"
            "      PatientName: [order.referring_physician_name, patient.patient_name]\n")
    out = load_mapping(write(tmp_path, "r.yaml", text)).apply_to(
        {"patient": {"birth_date": NULL, "sex": NULL, "patient_name": "DOE^J"},
         "order": {"referring_physician_name": NULL}}).records[0]
    assert out["PatientBirthDate"] is NULL and out["PatientSex"] is NULL
    assert out["PatientName"] == "DOE^J"  # a value wins over a null


def test_a_fhir_output_leaves_a_null_out(tmp_path: Path) -> None:
    text = "source: hl7v2\ntarget: fhir\noutputs:\n  - resource: Patient\n    fields:\n      birthDate: PID-7\n"
    out = load_mapping(write(tmp_path, "f.yaml", text)).apply(Message(MSH + 'PID|||||||""\r')).records[0]
    assert out == {"resourceType": "Patient"}
