"""Applying compiled rules: fallbacks, conditions, tables, errors and provenance."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError, HL7ApplicationError, HL7Reject
from engine.hl7.er7 import Message
from engine.mapping import CompiledMapping, load_mapping

from .conftest import write


def seg(name: str, fields: dict[int, str]) -> str:
    return "|".join([name] + [fields.get(i, "") for i in range(1, max(fields) + 1)])


MSG = "\r".join([
    "MSH|^~\\&|RIS|F|RB|F|20240101||ORM^O01|1|P|2.3.1",
    "PID|||A1^^^HOSP~B2^^^OTHER||Doe^Jane",
    "ORC|NW|P1",
    seg("OBR", {1: "1", 2: "P1", 4: "CT1^Head^L", 18: "ACC1", 24: "CT"}),
    "ORC|NW|P2",
    seg("OBR", {1: "2", 2: "P2", 4: "MR1^Brain^L", 24: "MR"}),
]) + "\r"  # fmt: skip


def mapping(
    tmp_path: Path, fields: str, extra: str = "", tables: dict[str, str] | None = None
) -> CompiledMapping:
    for name, text in (tables or {}).items():
        write(tmp_path, f"tables/{name}", text)
    text = (
        "source: hl7v2\ntarget: record\naccept: [ORM^O01]\noutputs:\n  - record: order\n"
        f"    for_each: ORC\n{extra}    fields:\n"
        "      order_control: ORC-1\n      patient_id: PID-3.1\n" + fields
    )
    return load_mapping(write(tmp_path, "m.yaml", text))


def apply(m: CompiledMapping, text: str = MSG) -> list[dict[str, object]]:
    return m.apply(Message(text)).records


def test_each_orc_group_is_one_record(tmp_path: Path) -> None:
    records = apply(mapping(tmp_path, "      modality: OBR-24\n"))
    assert [r["modality"] for r in records] == ["CT", "MR"]


def test_group_segments_are_never_borrowed_from_another_group(tmp_path: Path) -> None:
    records = apply(mapping(tmp_path, "      accession_number: OBR-18\n"))
    assert [r["accession_number"] for r in records] == ["ACC1", ""]


#: MSG with an OMG^O19-style PRIOR_RESULT after its orders: a PID, then an earlier order and its result.
PRIOR = MSG + "PID|1||OLD9\rPV1|1|O\rORC|RE|OLD1\rOBR|1|OLD1\rOBX|1|TX|CT^CT||no acute findings\r"


def test_until_ends_the_groups_at_a_segment_after_the_first_anchor(tmp_path: Path) -> None:
    fields = "      placer_order_number: ORC-2\n      requested_procedure_description: OBX-5\n"
    cut = mapping(tmp_path, fields, extra="    until: [PID]\n")
    assert [(r["placer_order_number"], r["patient_id"], r["requested_procedure_description"])
            for r in apply(cut, PRIOR)] == [("P1", "A1", ""), ("P2", "A1", "")]  # the prior's ORC, OBX, PID unread
    assert apply(cut) == apply(cut, MSG)  # a PID before the first ORC only: nothing changes
    whole = mapping(tmp_path, fields)
    assert [r["placer_order_number"] for r in apply(whole, PRIOR)] == ["P1", "P2", "OLD1"]


def test_until_needs_for_each(tmp_path: Path) -> None:
    text = ("source: hl7v2\ntarget: record\naccept: [ORM^O01]\noutputs:\n  - record: order\n"
            "    until: [PID]\n    fields:\n      order_control: ORC-1\n")
    with pytest.raises(ConfigError, match="until needs for_each"):
        load_mapping(write(tmp_path, "m.yaml", text))


def test_first_non_empty_path_wins(tmp_path: Path) -> None:
    records = apply(mapping(tmp_path, "      accession_number: [IPC-1, OBR-18, OBR-2]\n"))
    assert [r["accession_number"] for r in records] == ["ACC1", "P2"]


def test_selector_picks_the_trusted_authority(tmp_path: Path) -> None:
    records = apply(
        mapping(
            tmp_path, "      issuer: PID-3(4.1=OTHER).4.1\n      admission_id: PID-3(4.1=OTHER).1\n"
        )
    )
    assert records[0]["admission_id"] == "B2"


def test_const_and_default(tmp_path: Path) -> None:
    m = mapping(
        tmp_path,
        "      modality: {const: OT}\n      accession_number: {path: OBR-18, default: NONE}\n",
    )
    assert [(r["modality"], r["accession_number"]) for r in apply(m)] == [
        ("OT", "ACC1"),
        ("OT", "NONE"),
    ]


def test_when_leaves_the_field_out(tmp_path: Path) -> None:
    m = mapping(tmp_path, "      modality: {path: OBR-24, when: {field: OBR-24, equals: MR}}\n")
    assert ["modality" in r for r in apply(m)] == [False, True]


def test_output_when_filters_whole_records(tmp_path: Path) -> None:
    m = mapping(tmp_path, "", extra="    when: {field: OBR-24, in: [MR]}\n")
    assert [r["order_control"] for r in apply(m)] == ["NW"]


def test_condition_matches_and_present(tmp_path: Path) -> None:
    fields = (
        "      modality: {const: X, when: "
        "[{field: OBR-4.1, matches: 'C.*'}, {field: OBR-18, present: true}]}\n"
    )
    assert ["modality" in r for r in apply(mapping(tmp_path, fields))] == [True, False]


def test_required_missing_is_101_at_the_group_segment(tmp_path: Path) -> None:
    m = mapping(tmp_path, "      accession_number: {path: OBR-18, required: true}\n")
    with pytest.raises(HL7ApplicationError) as info:
        apply(m)
    assert info.value.code == 101 and str(info.value.location) == "OBR^2^18"


def test_table_lookup_with_default(tmp_path: Path) -> None:
    fields = (
        "      modality: {path: OBR-24, table: {name: mods, on_missing: default}, default: OT}\n"
    )
    m = mapping(tmp_path, fields, tables={"mods.csv": "code,modality\nCT,CT\n"})
    assert [r["modality"] for r in apply(m)] == ["CT", "OT"]


def test_table_lookup_keep_and_empty(tmp_path: Path) -> None:
    fields = (
        "      modality: {path: OBR-24, table: {name: mods, on_missing: keep}}\n"
        "      scheduled_station_ae_title: {path: OBR-24, table: {name: mods, on_missing: empty}}\n"
    )
    m = mapping(tmp_path, fields, tables={"mods.csv": "code,modality\nCT,CT_AE\n"})
    assert [(r["modality"], r["scheduled_station_ae_title"]) for r in apply(m)] == [
        ("CT_AE", "CT_AE"),
        ("MR", ""),
    ]


def test_table_miss_is_103_with_location(tmp_path: Path) -> None:
    m = mapping(
        tmp_path,
        "      modality: {path: OBR-24, table: mods}\n",
        tables={"mods.csv": "code,m\nCT,CT\n"},
    )
    with pytest.raises(HL7ApplicationError) as info:
        apply(m)
    assert info.value.code == 103


def test_keyed_table_uses_several_paths(tmp_path: Path) -> None:
    fields = "      order_status: {table: {name: st, key: [ORC-1, OBR-24], column: s}}\n"
    m = mapping(tmp_path, fields, tables={"st.csv": "c,m,s\nNW,CT,A\nNW,MR,B\n"})
    assert [r["order_status"] for r in apply(m)] == ["A", "B"]


def test_variables_feed_later_fields(tmp_path: Path) -> None:
    extra = "    vars:\n      mod: {path: OBR-24, transform: [lower]}\n"
    m = mapping(
        tmp_path,
        "      modality: $mod\n      scheduled_station_name: {path: $mod, transform: [upper]}\n",
        extra,
    )
    assert [(r["modality"], r["scheduled_station_name"]) for r in apply(m)] == [
        ("ct", "CT"),
        ("mr", "MR"),
    ]


def test_multi_values_are_joined_with_backslash(tmp_path: Path) -> None:
    records = apply(mapping(tmp_path, "      scheduled_station_ae_title: PID-3(*).1\n"))
    assert records[0]["scheduled_station_ae_title"] == "A1\\B2"


def test_first_rule_fallback(tmp_path: Path) -> None:
    fields = (
        "      modality:\n        first:\n          - IPC-5\n"
        "          - {path: OBR-4.1, transform: [{component: 1}, lower]}\n"
    )
    assert [r["modality"] for r in apply(mapping(tmp_path, fields))] == ["ct1", "mr1"]


def test_bad_ts_is_102_at_its_field(tmp_path: Path) -> None:
    m = mapping(tmp_path, "      scheduled_start: {path: OBR-2, transform: [ts_to_dt]}\n")
    with pytest.raises(HL7ApplicationError) as info:
        apply(m)
    assert info.value.code == 102 and str(info.value.location) == "OBR^1^2"


def test_unaccepted_message_type_is_rejected(tmp_path: Path) -> None:
    m = mapping(tmp_path, "")
    with pytest.raises(HL7Reject) as info:
        apply(m, MSG.replace("ORM^O01", "ADT^A01"))
    assert info.value.code == 200
    with pytest.raises(HL7Reject) as info:
        apply(m, MSG.replace("ORM^O01", "ORM^O02"))
    assert info.value.code == 201


def test_provenance_names_source_and_rule(tmp_path: Path) -> None:
    m = mapping(
        tmp_path, "      accession_number: {path: [IPC-1, OBR-18, OBR-2], note: site rule}\n"
    )
    result = m.apply(Message(MSG))
    second = next(p for p in result.provenance_of(1) if p.target == "accession_number")
    assert (second.source, second.value) == ("OBR-2", "P2")
    assert second.rule == "first of IPC-1 | OBR-18 | OBR-2 (site rule)"


def test_other_separators_are_honoured(tmp_path: Path) -> None:
    text = MSG.replace("|^~\\&|", "|^~\\}|", 1).replace("Doe^Jane", "Doe&X^Jane")
    m = mapping(tmp_path, "      requesting_physician: {path: PID-5, transform: [xpn_to_pn]}\n")
    assert apply(m, text)[0]["requesting_physician"] == "Doe&X^Jane"


def test_apply_to_refuses_a_message_for_record_sources(tmp_path: Path) -> None:
    text = "source: record\ntarget: dicom\noutputs:\n  - fields:\n      Modality: order.modality\n"
    m = load_mapping(write(tmp_path, "d.yaml", text))
    with pytest.raises(TypeError):
        m.apply(Message(MSG))
    assert m.apply_to({"order": {"modality": "CT"}}).records == [{"Modality": "CT"}]


FHIR = """\
source: record
target: fhir
outputs:
  - resource: Patient
    fields:
      identifier[0].value: patient.patient_id
      identifier[0].system: {path: patient.issuer, transform: [{prefix: "urn:oid:"}]}
      name[0].family: {path: patient.patient_name, transform: [{component: 1}]}
      name[0].given[0]: {path: patient.patient_name, transform: [{component: 2}]}
      gender: {const: female, when: {field: patient.sex, equals: F}}
      birthDate: {path: patient.birth_date, transform: [ts_to_fhir]}
"""


def test_fhir_target_builds_a_valid_resource(tmp_path: Path) -> None:
    m = load_mapping(write(tmp_path, "f.yaml", FHIR))
    patient = {"patient_id": "A1", "issuer": "1.2.3", "patient_name": "Doe^Jane", "sex": "F"}
    (resource,) = m.apply_to({"patient": {**patient, "birth_date": "19720214"}}).records
    assert resource == {
        "resourceType": "Patient",
        "identifier": [{"value": "A1", "system": "urn:oid:1.2.3"}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1972-02-14",
    }


def test_invalid_fhir_output_is_refused(tmp_path: Path) -> None:
    m = load_mapping(write(tmp_path, "f.yaml", FHIR.replace("[ts_to_fhir]", "[trim]")))
    with pytest.raises(HL7ApplicationError) as info:
        m.apply_to({"patient": {"patient_id": "A1", "birth_date": "19720214"}})
    assert info.value.code == 102 and "birthDate" in info.value.text


HL7_OUT = """\
source: record
target: hl7v2
outputs:
  - segment_order: [MSH, PID, ORC]
    fields:
      MSH-3: {const: RADBRIDGE}
      MSH-9.1: {const: ORM}
      MSH-9.2: {const: O01}
      MSH-12: {const: "2.3.1"}
      PID-3.1: order.patient_id
      PID-3.4: order.issuer
      ORC-1: {const: SC}
      ORC-2: order.placer_order_number
      ORC-5: {const: CM}
"""


def test_hl7_target_writes_escaped_segments(tmp_path: Path) -> None:
    m = load_mapping(write(tmp_path, "h.yaml", HL7_OUT))
    order = {"patient_id": "A|1", "issuer": "HOSP", "placer_order_number": "P^7"}
    (out,) = m.apply_to({"order": order}).records
    assert out["message"].split("\r")[:3] == [
        "MSH|^~\\&|RADBRIDGE||||||ORM^O01|||2.3.1",
        "PID|||A\\F\\1^^^HOSP",
        "ORC|SC|P\\S\\7|||CM",
    ]
    assert Message(out["message"]).segment("PID") is not None


def test_dicom_source_reads_keywords_and_sequences(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    text = (
        "source: dicom\ntarget: record\noutputs:\n  - record: order\n    fields:\n"
        "      order_control: {const: SC}\n      patient_id: PatientID\n"
        "      modality: ScheduledProcedureStepSequence[0].Modality\n"
        "      scheduled_station_ae_title:\n"
        "        ScheduledProcedureStepSequence[*].ScheduledStationAETitle\n"
    )
    m = load_mapping(write(tmp_path, "d.yaml", text))
    ds = Dataset()
    ds.PatientID = "A1"
    items = []
    for modality, ae in (("CT", "CT1"), ("MR", "MR1")):
        item = Dataset()
        item.Modality = modality
        item.ScheduledStationAETitle = ae
        items.append(item)
    ds.ScheduledProcedureStepSequence = items
    (record,) = m.apply_to(ds).records
    assert (record["patient_id"], record["modality"]) == ("A1", "CT")
    assert record["scheduled_station_ae_title"] == "CT1\\MR1"


def test_an_each_item_context_copies_every_field_but_scope_and_the_item() -> None:
    """Context.for_item spells out the fields: a field added to Context must be copied there too."""
    import dataclasses

    from engine.hl7.er7 import Separators
    from engine.mapping.sources import Context

    ctx = Context(Separators(), None, {"PID": []}, {"a": 1}, {"v": 2}, "cur", {"o": 3}, 7, False)
    item = ctx.for_item({"OBX": []}, "x", {"i": 1})
    for f in dataclasses.fields(Context):
        expected = {"scope": {"OBX": []}, "current": "x", "current_obj": {"i": 1}}.get(f.name, getattr(ctx, f.name))
        assert getattr(item, f.name) == expected, f.name
    assert item.vars is ctx.vars  # variables are shared with the output, as before
