"""The shipped golden cases (mappings/tests) run in the project's suite too."""

from __future__ import annotations

import json
import shutil
from io import StringIO
from pathlib import Path

import pytest

from engine.domain.records import RECORD_TYPES
from engine.mapping import load_mappings
from engine.mapping.cli import verify
from engine.mapping.golden import GoldenCase, discover, run_case

from .conftest import MAPPINGS_DIR

CASES = discover(MAPPINGS_DIR)
MAPPINGS = load_mappings(MAPPINGS_DIR)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.mapping}/{c.name}" for c in CASES])
def test_golden_case(case: GoldenCase) -> None:
    outcome = run_case(case, MAPPINGS[case.mapping])
    assert outcome.passed, outcome.diff


@pytest.mark.parametrize("case", CASES, ids=[f"{c.mapping}/{c.name}" for c in CASES])
def test_golden_records_satisfy_the_record_contract(case: GoldenCase) -> None:
    expected = json.loads(case.expected_path.read_text(encoding="utf-8"))
    for record in expected.get("records", []):
        if "record" in record:
            RECORD_TYPES[record["record"]].model_validate(record)


def test_the_required_cases_exist() -> None:
    names = {f"{c.mapping}/{c.name}" for c in CASES}
    assert {
        "order-to-worklist/orm_o01_two_orders",
        "order-to-worklist/orm_o01_latin1",
        "order-to-worklist/orm_o01_missing_patient_id",
        "order-to-worklist/omi_o23_ipc",
        "adt-to-patient/adt_a40_two_pairs",
        "adt-to-patient/adt_a47_change_id",
        "adt-to-patient/adt_a08_update",
    } <= names


def test_latin1_case_is_really_latin1_bytes() -> None:
    raw = (MAPPINGS_DIR / "tests/order-to-worklist/orm_o01_latin1.hl7").read_bytes()
    assert b"8859/1" in raw and "é".encode("latin-1") in raw


def test_missing_field_case_expects_error_and_location() -> None:
    path = MAPPINGS_DIR / "tests/order-to-worklist/orm_o01_missing_patient_id.expected.json"
    error = json.loads(path.read_text())["error"]
    assert (error["code"], error["location"]) == (101, "PID^1^3^1")


def test_verify_passes_on_the_shipped_cases() -> None:
    out = StringIO()
    assert verify(MAPPINGS_DIR, out=out) == 0
    assert f"{len(CASES)} passed, 0 failed" in out.getvalue()


def test_verify_shows_a_diff_and_fails(tmp_path: Path) -> None:
    copy = tmp_path / "mappings"
    shutil.copytree(MAPPINGS_DIR, copy)
    expected = copy / "tests/order-to-worklist/orm_o01_nw_ct.expected.json"
    expected.write_text(expected.read_text().replace('"STAT"', '"ROUTINE"'))
    out = StringIO()
    assert verify(copy, out=out) == 1
    text = out.getvalue()
    assert "FAIL order-to-worklist/orm_o01_nw_ct" in text
    assert '-      "priority": "ROUTINE",' in text and '+      "priority": "STAT",' in text
