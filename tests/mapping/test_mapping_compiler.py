"""Load-time validation: every problem names file, line, field and a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.mapping import load_mapping, load_mappings

from .conftest import MAPPINGS_DIR, write

DICOM = "source: record\ntarget: dicom\noutputs:\n  - fields:\n"
HEAD = """\
source: hl7v2
target: record
hl7_version: "2.5.1"
outputs:
  - record: order
    fields:
      order_control: ORC-1
      patient_id: PID-3.1
"""


def problems(tmp_path: Path, body: str, tables: dict[str, str] | None = None) -> list[str]:
    for name, text in (tables or {}).items():
        write(tmp_path, f"tables/{name}", text)
    path = write(tmp_path, "m.yaml", HEAD + body)
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    return info.value.problems


def test_a_valid_file_compiles(tmp_path: Path) -> None:
    mapping = load_mapping(write(tmp_path, "m.yaml", HEAD))
    assert (mapping.name, mapping.source, mapping.target) == ("m", "hl7v2", "record")


def test_unknown_transform_is_reported_with_line_and_suggestion(tmp_path: Path) -> None:
    found = problems(tmp_path, "      accession_number: {path: OBR-18, transform: [uper]}\n")
    assert len(found) == 1
    assert "m.yaml:9: outputs.0.fields.accession_number.transform.0" in found[0]
    assert "did you mean 'upper'?" in found[0]


def test_wrong_argument_count(tmp_path: Path) -> None:
    found = problems(tmp_path, "      accession_number: {path: OBR-18, transform: [replace]}\n")
    assert "replace takes 2 argument(s), got 0" in found[0]


def test_a_misspelt_ts_to_da_argument_is_refused(tmp_path: Path) -> None:
    """Only 'keep' changes ts_to_da (a year-only date given back); any other word was taken silently and the
    date refused AE 102 as without it."""
    found = problems(tmp_path, "      scheduled_start: {path: OBR-7, transform: [{ts_to_da: kept}]}\n")
    assert len(found) == 1 and "ts_to_da takes no argument or 'keep', got 'kept'" in found[0]
    kept = "      scheduled_start: {path: OBR-7, transform: [{ts_to_da: keep}]}\n"
    load_mapping(write(tmp_path, "k.yaml", HEAD + kept))


def test_unknown_table_is_reported(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "      priority: {path: ORC-7.6, table: priorty}\n",
        {"priority.csv": "code,p\nS,STAT\n"},
    )
    assert "unknown table 'priorty'" in found[0] and "did you mean 'priority'?" in found[0]


def test_unknown_table_column_lists_the_columns(tmp_path: Path) -> None:
    body = "      priority: {path: ORC-7.6, table: {name: priority, column: prio}}\n"
    found = problems(tmp_path, body, {"priority.csv": "code,p\nS,STAT\n"})
    assert "no result column 'prio' (columns: code, p)" in found[0]


def test_path_syntax_error(tmp_path: Path) -> None:
    found = problems(tmp_path, "      accession_number: OBR_18\n")
    assert "m.yaml:9:" in found[0] and "is not an HL7 path" in found[0]


def test_field_outside_the_segment_definition(tmp_path: Path) -> None:
    found = problems(tmp_path, "      accession_number: OBR-99\n")
    assert "OBR-99 does not exist in HL7 v2.5.1 (OBR has fields 1 to" in found[0]


def test_unknown_segment_gets_a_suggestion(tmp_path: Path) -> None:
    found = problems(tmp_path, "      accession_number: OBX-18\n      modality: OBQ-24\n")
    assert len(found) == 1 and "segment OBQ is not defined" in found[0]


def test_z_segments_are_site_defined(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", HEAD + "      study_instance_uid: ZDS-1.1\n")
    assert load_mapping(path).name == "m"


def test_unknown_record_field_gets_a_suggestion(tmp_path: Path) -> None:
    found = problems(tmp_path, "      accesion_number: OBR-18\n")
    assert "unknown field 'accesion_number' (did you mean 'accession_number'?)" in found[0]


def test_missing_required_contract_field(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", HEAD.replace("      patient_id: PID-3.1\n", ""))
    with pytest.raises(
        ConfigError, match="required by the record contract but not mapped: patient_id"
    ):
        load_mapping(path)


def test_unknown_key_in_a_rule(tmp_path: Path) -> None:
    found = problems(tmp_path, "      modality: {path: OBR-24, defualt: CT}\n")
    assert len(found) == 1
    assert found[0].endswith(
        "m.yaml:9: outputs.0.fields.modality.defualt: Extra inputs are not permitted"
    )


def test_a_number_where_a_rule_belongs(tmp_path: Path) -> None:
    found = problems(tmp_path, "      modality: 5\n")
    assert len(found) == 1 and "write a path (PID-3.1)" in found[0]


def test_rule_with_two_sources(tmp_path: Path) -> None:
    found = problems(tmp_path, "      modality: {path: OBR-24, const: CT}\n")
    assert "give exactly one of path, const, first, fields" in found[0]


def test_unknown_variable(tmp_path: Path) -> None:
    found = problems(tmp_path, "      modality: $modalty\n")
    assert "unknown variable $modalty" in found[0]


def test_relative_path_outside_each(tmp_path: Path) -> None:
    found = problems(tmp_path, "      modality: item.1\n")
    assert "relative path item.1 outside an each" in found[0]


def test_bad_message_type_in_accept(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", "accept: [ORM-O01]\n" + HEAD)
    with pytest.raises(ConfigError, match="'ORM-O01' is not a message type like ORM\\^O01"):
        load_mapping(path)


def test_dicom_keyword_typo(tmp_path: Path) -> None:
    text = DICOM + "      PatientNmae: patient.patient_name\n"
    with pytest.raises(ConfigError, match=r"PatientNmae is not a DICOM keyword.*'PatientName'"):
        load_mapping(write(tmp_path, "d.yaml", text))


def test_dicom_index_on_a_non_sequence(tmp_path: Path) -> None:
    text = DICOM + "      PatientName[0].Modality: order.modality\n"
    with pytest.raises(ConfigError, match="PatientName is not a sequence"):
        load_mapping(write(tmp_path, "d.yaml", text))


def test_record_source_field_typo(tmp_path: Path) -> None:
    text = DICOM + "      Modality: order.modalty\n"
    with pytest.raises(ConfigError, match="order has no field 'modalty'"):
        load_mapping(write(tmp_path, "d.yaml", text))


def test_fhir_target_checks_the_resource_and_element(tmp_path: Path) -> None:
    text = "source: record\ntarget: fhir\noutputs:\n  - resource: Patient\n    fields:\n"
    text += "      birthdate: patient.birth_date\n"
    with pytest.raises(ConfigError, match=r"'birthdate' is not an element.*birthDate"):
        load_mapping(write(tmp_path, "f.yaml", text))


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"m\.yaml:\d+: invalid YAML"):
        load_mapping(write(tmp_path, "m.yaml", "source: hl7v2\ntarget: [record\n"))


def test_bad_timezone_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="IANA"):
        load_mapping(write(tmp_path, "m.yaml", HEAD), timezone="Mars/Olympus")


def test_load_mappings_is_all_or_nothing(tmp_path: Path) -> None:
    write(tmp_path, "good.yaml", HEAD)
    write(tmp_path, "bad.yaml", HEAD + "      modality: OBR-999\n")
    with pytest.raises(ConfigError) as info:
        load_mappings(tmp_path)
    assert len(info.value.problems) == 1 and "bad.yaml" in info.value.problems[0]


def test_shipped_mappings_all_load() -> None:
    loaded = load_mappings(MAPPINGS_DIR)
    assert {"adt-to-patient", "order-to-worklist", "order-to-mwl"} <= set(loaded)


def test_component_beyond_the_data_type(tmp_path: Path) -> None:
    found = problems(tmp_path, "      universal_service_id: OBR-4.9\n")
    assert (
        "OBR-4 (universal service identifier) is CE in HL7 v2.5.1, which has 6 components"
        in found[0]
    )


def test_component_of_a_primitive_field(tmp_path: Path) -> None:
    found = problems(tmp_path, "      order_status: PID-8.2\n")
    assert "is IS in HL7 v2.5.1, which has no components" in found[0]


def test_output_when_cannot_use_vars(tmp_path: Path) -> None:
    text = HEAD.replace(
        "    fields:\n",
        "    when: {field: $m, equals: CT}\n    vars: {m: OBR-24}\n    fields:\n",
        1,
    )
    with pytest.raises(ConfigError, match=r"unknown variable \$m"):
        load_mapping(write(tmp_path, "m.yaml", text))
