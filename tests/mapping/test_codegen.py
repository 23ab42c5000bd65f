"""Generated record outputs (engine.mapping.codegen) against the interpreter, their reference.

Every shipped mapping and a mapping that uses every rule feature are applied to
corpus messages, the golden test inputs and generated messages, both ways. The
generated function is called directly (no fallback), so a difference or a
spurious failure in the generated code fails here. When the interpreter raises,
the receive path (``apply(provenance=False)``) must raise the same HL7 error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import HL7Error
from engine.hl7.charset import decode
from engine.hl7.er7 import Message
from engine.mapping import CompiledMapping, load_mapping, load_mappings
from engine.mapping.codegen import _MAX_DEPTH, GiveUp
from engine.mapping.scope import groups, message_scope
from engine.mapping.sources import Context
from engine.mapping.transforms import STANDARD_SEPARATORS

from .conftest import CORPUS, MAPPINGS_DIR, write

SHIPPED = {name: m for name, m in load_mappings(MAPPINGS_DIR).items() if m.source == "hl7v2"}

FEATURES = """\
source: hl7v2
target: record
accept: [ORM^O01, OMI^O23, ADT^A08]
outputs:
  - record: order
    for_each: ORC
    when: {field: ORC-1, not_in: [ZZ]}
    vars:
      rp: {first: [{path: IPC-2, transform: [trim]}, {path: [OBR-19, OBR-18]}]}
      status: {table: {name: order_control_status, key: [ORC-1, ORC-5], column: sps_status, on_missing: empty}}
      fixed: {const: K}
    fields:
      order_control: {path: ORC-1, required: true}
      order_status: {path: MSH-9.2}
      patient_id: {path: [PID-3(4.1=HOSP).1, PID-3.1], required: true}
      issuer: PID-3(*).4.1
      placer_order_number: {path: ORC-2.1, when: {field: ORC-1, equals: NW}}
      filler_order_number:
        first:
          - {path: ORC-3, transform: [trim], when: {field: ORC-3.2, present: true}}
          - {path: OBR-3.1.2}
          - {const: F}
      accession_number: {path: OBR-18, default: NONE}
      issuer_of_accession_number: {path: IPC-1.2.1, transform: [upper]}
      modality: {path: OBR-24, transform: [trim, upper], table: {name: modality_aliases, on_missing: keep}}
      scheduled_station_ae_title: IPC-9(*)
      scheduled_station_name: {path: $status, default: "-"}
      requested_procedure_id: $rp
      scheduled_procedure_step_id: {path: [IPC-4, $fixed]}
      scheduled_start: {path: [TQ1-7, ORC-7.4, OBR-7], transform: [ts_to_dt]}
      priority: {path: ORC-7.6, transform: [upper], table: {name: priority, on_missing: error}}
      requested_procedure_description: {path: OBR-4.2, when: {field: OBR-4.1, matches: "[A-Z]+[0-9]*"}}
      requested_procedure_code:
        required: true
        fields:
          code_value: OBR-4.1
          coding_scheme_designator: {path: OBR-4.3, default: L}
          code_meaning: {path: OBR-4.2, transform: [trim]}
      scheduled_protocol_code:
        fields:
          code_value: IPC-6.1
          code_meaning: IPC-6.2
      requesting_physician: {path: OBR-16, transform: [xcn_to_pn]}
      admission_id: [PV1-19, PID-3(2).1]
      study_instance_uid: {first: [ZDS-1.1, {path: OBR-18, transform: [uid_from_text]}]}
      universal_service_id: {path: OBR(2)-4.1}
      diagnostic_service_section: {path: OBR-24, required: true}
      scheduled_procedure_step_location: {path: IPC-8, when: {field: ORC-5, in: [SC, IP, CM], present: true}}
      placer_order_namespace: {path: ORC-2.2, when: {field: ZDS-1.1, present: false}}
      filler_order_namespace: {const: V, when: {field: $rp, matches: "[A-Z].*"}}
      order_detail_segment:
        first:
          - {const: RXO, when: {field: OBR-4(*).1, equals: CT1}}
          - {const: ODS, when: {field: IPC-2, not_in: [RP], equals: A, present: true}}
          - {const: OBR, when: {field: OBR-4, present: true}}
"""


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> CompiledMapping:
    root = tmp_path_factory.mktemp("codegen")
    for table in (MAPPINGS_DIR / "tables").iterdir():
        write(root, f"tables/{table.name}", table.read_text(encoding="utf-8"))
    return load_mapping(write(root, "features.yaml", FEATURES))


def interpreted(mapping: CompiledMapping, message: Message) -> list[dict[str, Any]] | HL7Error:
    try:
        return mapping.apply(message).records
    except HL7Error as exc:
        return exc


def generated(mapping: CompiledMapping, message: Message) -> list[dict[str, Any]]:
    """The records from the generated functions alone (the interpreter for outputs without one)."""
    seps = STANDARD_SEPARATORS if message.seps == STANDARD_SEPARATORS else message.seps
    whole = message_scope(message)
    records = []
    for output in mapping.outputs:
        for scope in groups(message, output.for_each, whole, output.until):
            ctx = Context(seps, message, scope, provenance=False)
            built = output.fast(ctx) if output.fast is not None else output.build(ctx, [])
            if built is not None:
                records.append(built)
    return records


def same(mapping: CompiledMapping, message: Message) -> None:
    """Generated and interpreted agree; on an error the receive path raises the interpreter's error."""
    if not mapping.accepts(message):
        return
    expected = interpreted(mapping, message)
    if isinstance(expected, HL7Error):
        with pytest.raises(Exception):  # noqa: B017 - GiveUp or the error itself
            generated(mapping, message)
        with pytest.raises(HL7Error) as raised:
            mapping.apply(message, provenance=False)
        got = raised.value
        assert (got.code, got.text, got.location) == (expected.code, expected.text, expected.location)
        return
    assert generated(mapping, message) == expected
    assert mapping.apply(message, provenance=False).records == expected


def test_every_record_output_is_generated(features: CompiledMapping) -> None:
    for mapping in [*SHIPPED.values(), features]:
        for output in mapping.outputs:
            assert output.fast is not None, (mapping.name, output.name)


def test_conditions_on_hl7_paths_are_tested_inline(features: CompiledMapping) -> None:
    """Only the condition on a variable calls ``holds``: the others read their path in place."""
    (output,) = features.outputs
    assert output.fast is not None and output.fast.__doc__ is not None
    assert output.fast.__doc__.count(".holds(ctx)") == 1


def corpus_files() -> list[Path]:
    return sorted((CORPUS / "hl7").rglob("*.hl7")) if (CORPUS / "hl7").is_dir() else []


def golden_files() -> list[Path]:
    return sorted((MAPPINGS_DIR / "tests").rglob("*.hl7"))


def test_corpus_and_golden_inputs_map_the_same(features: CompiledMapping) -> None:
    files = corpus_files()
    if not files:
        from tests.conftest import need

        need(False, f"shared corpus not found at {CORPUS}")
    checked = 0
    for path in [*files, *golden_files()]:
        message = Message(decode(path.read_bytes()).text)
        for mapping in [*SHIPPED.values(), features]:
            same(mapping, message)
            checked += mapping.accepts(message)
    assert checked > 50


# Generated messages: the segments the mappings read, with values that hit every branch
# (components, repetitions, sub-components, escapes, the HL7 null "", bad and good dates).
ATOMS = st.sampled_from([
    "", "A", "b c", " pad ", "HOSP", "OTHER", "NW", "XO", "CA", "SC", "DC", "ZZ", "CM", "IP", "S", "R", "stat",
    "CT", "mr", "US", "CT1", "x1", "20240105", "202401051230", "20240105123045.1+0100", "2024013", "1999",
    '""', "\\F\\", "\\S\\x", "\\T\\", "\\E\\", "\\R\\", "\\X41\\", "Müller", "1.2.3",
])  # fmt: skip
SUBS = st.lists(ATOMS, min_size=1, max_size=3).map("&".join)
COMPS = st.lists(SUBS, min_size=1, max_size=6).map("^".join)
FIELD = st.lists(COMPS, min_size=1, max_size=3).map("~".join)
SEGMENT_NAMES = st.sampled_from(["PID", "PV1", "MRG", "ORC", "OBR", "TQ1", "IPC", "ZDS", "NTE", "EVN"])
TYPES = st.sampled_from(["ORM^O01", "OMI^O23", "OMG^O19", "ADT^A08", "ADT^A40", "ADT^A47", "ADT^A01"])


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(TYPES)
    lines = [f"MSH|^~\\&|RIS|F|RB|F|20240101||{kind}|1|P|2.5.1"]
    for _ in range(draw(st.integers(1, 8))):
        name = draw(SEGMENT_NAMES)
        fields = draw(st.lists(FIELD, max_size=46))
        lines.append("|".join([name, *fields]))
    return Message("\r".join(lines) + "\r")


@given(messages())
def test_generated_messages_map_the_same(features: CompiledMapping, message: Message) -> None:
    for mapping in [*SHIPPED.values(), features]:
        same(mapping, message)


@given(st.lists(st.sampled_from(["ORC|NW|P1", "OBR|1|P1||CT1^Head^L||||||||||||||A1||||||CT",
                                 "PID|||X^^^HOSP~Y^^^OTHER", "IPC|A^B|RP|1.2|SPS|MR"]), max_size=8))
def test_group_structure_maps_the_same(features: CompiledMapping, lines: list[str]) -> None:
    message = Message("\r".join(["MSH|^~\\&|RIS|F|RB|F|20240101||OMI^O23|1|P|2.5.1", *lines]) + "\r")
    for mapping in [*SHIPPED.values(), features]:
        same(mapping, message)


def test_required_value_missing_gives_up_and_the_interpreter_reports(features: CompiledMapping) -> None:
    obr = "OBR|1" + "|" * 23 + "CT"
    message = Message(f"MSH|^~\\&|RIS|F|RB|F|20240101||ORM^O01|1|P|2.5.1\rPID|||\rORC|NW|P1\r{obr}\r")
    (output,) = features.outputs
    scope = groups(message, "ORC")[0]
    with pytest.raises(GiveUp):
        assert output.fast is not None
        output.fast(Context(message.seps, message, scope, provenance=False))
    with pytest.raises(HL7Error) as raised:
        features.apply(message, provenance=False)
    assert raised.value.code == 101 and str(raised.value.location) == "PID^1^3^1"


def test_alternatives_nested_too_deeply_stay_interpreted(tmp_path: Path) -> None:
    paths = ", ".join(f"OBR-{n}" for n in range(1, _MAX_DEPTH + 5))
    text = (
        "source: hl7v2\ntarget: record\naccept: [ORM^O01]\noutputs:\n  - record: order\n    for_each: ORC\n"
        f"    fields:\n      order_control: ORC-1\n      patient_id: PID-3.1\n      accession_number: [{paths}]\n"
    )
    mapping = load_mapping(write(tmp_path, "deep.yaml", text))
    assert mapping.outputs[0].fast is None
    message = Message("MSH|^~\\&|RIS|F|RB|F|20240101||ORM^O01|1|P|2.5.1\rPID|||7\rORC|NW|P1\rOBR|1|P1\r")
    assert mapping.apply(message, provenance=False).records[0]["accession_number"] == "1"


# Record -> HL7 v2 (ORU^R01 out): the shipped mappings that write HL7 from records.
WRITERS = {name: m for name, m in load_mappings(MAPPINGS_DIR).items()
           if m.source == "record" and m.target == "hl7v2"}
REPORT_INPUT = json.loads((MAPPINGS_DIR / "tests" / "report-to-oru" / "final_v1.input.json").read_text())
TEXTS = st.sampled_from(["", '""', "X", "F", "P", "C", "1", "A|B", "a^b", "x&y", "back\\slash", "r~r", "Müller",
                         "Doe^Jane^Q^Dr^Jr", "20241203093000", "line\nbreak"])


def generated_writer(mapping: CompiledMapping, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages from the generated functions alone."""
    records = []
    for output in mapping.outputs:
        assert output.fast is not None
        built = output.fast(Context(STANDARD_SEPARATORS, obj=data, provenance=False))
        if built is not None:
            records.append(built)
    return records


def same_writer(mapping: CompiledMapping, data: dict[str, Any]) -> None:
    try:
        expected: list[dict[str, Any]] | HL7Error = mapping.apply_to(data).records
    except HL7Error as exc:
        expected = exc
    if isinstance(expected, HL7Error):
        with pytest.raises(Exception):  # noqa: B017 - GiveUp or the error itself
            generated_writer(mapping, data)
        with pytest.raises(HL7Error) as raised:
            mapping.apply_to(data, provenance=False)
        assert (raised.value.code, raised.value.text) == (expected.code, expected.text)
        return
    assert generated_writer(mapping, data) == expected
    assert mapping.apply_to(data, provenance=False).records == expected


def test_every_hl7_output_of_a_record_mapping_is_generated() -> None:
    assert WRITERS
    for mapping in WRITERS.values():
        for output in mapping.outputs:
            assert output.fast is not None, (mapping.name, output.name)


def test_golden_record_inputs_write_the_same_hl7() -> None:
    inputs = sorted((MAPPINGS_DIR / "tests").rglob("*.input.json"))
    for mapping in WRITERS.values():
        for path in inputs:
            same_writer(mapping, json.loads(path.read_text()))


@st.composite
def report_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """The golden report input with every text value redrawn or left out, and 0-4 report lines."""
    data: dict[str, Any] = {}
    for key, part in REPORT_INPUT.items():
        data[key] = {}
        for name, value in part.items():
            if draw(st.booleans()) and name != "lines":
                continue  # left out
            if isinstance(value, dict):
                data[key][name] = {k: draw(TEXTS) for k in value if draw(st.booleans())}
            elif isinstance(value, list):
                data[key][name] = [{"set_id": str(n), "text": draw(TEXTS)} for n in range(draw(st.integers(0, 4)))]
            else:
                data[key][name] = draw(TEXTS)
    return data


@given(report_inputs())
def test_generated_record_inputs_write_the_same_hl7(data: dict[str, Any]) -> None:
    for mapping in WRITERS.values():
        same_writer(mapping, data)
