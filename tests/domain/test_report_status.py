"""OBR-25 through the site table (engine.domain.report_status)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.domain.report_status import (
    DEFAULT_STATUS_TABLE,
    derive_status,
    load_status_table,
    read_derived,
    read_status,
)
from engine.errors import ConfigError, HL7ApplicationError
from tests.conftest import ROOT

SHIPPED = load_status_table(ROOT / "mappings" / "tables" / "report_status.csv")


@pytest.mark.parametrize(("code", "result", "fhir"), [
    ("F", "F", "final"), ("Final", "F", "final"), (" FINAL ", "F", "final"), ("Prelim", "P", "preliminary"),
    ("Wet Read", "P", "preliminary"), ("wet  read", "P", "preliminary"), ("C", "C", "corrected"),
    ("X", "X", "cancelled"), ("Addendum", "C", "appended"),
])
def test_what_reporting_systems_send_is_read_through_the_shipped_table(code: str, result: str, fhir: str):
    status = read_status(SHIPPED, code)
    assert (status.result_status, status.fhir_status) == (result, fhir)


@pytest.mark.parametrize("code", ["", "Z", "Draft"])
def test_a_code_not_in_the_table_is_ae_103_at_obr_25_of_its_obr(code: str):
    with pytest.raises(HL7ApplicationError) as err:
        read_status(SHIPPED, code, sequence=2)
    assert err.value.code == 103 and str(err.value.location) == "OBR^2^25"
    assert "report_status.csv" in err.value.text


def test_no_table_file_means_hl7_table_0123():
    assert load_status_table(Path("/nonexistent.csv")) is DEFAULT_STATUS_TABLE
    with pytest.raises(HL7ApplicationError):
        read_status(DEFAULT_STATUS_TABLE, "Final")
    for code, fhir in (("P", "preliminary"), ("F", "final"), ("C", "corrected"), ("X", "cancelled")):
        assert read_status(DEFAULT_STATUS_TABLE, code).fhir_status == fhir
        assert read_status(DEFAULT_STATUS_TABLE, f" {code.lower()} ").result_status == code


def test_a_table_with_an_unknown_result_status_is_refused_naming_the_file(tmp_path: Path):
    path = tmp_path / "report_status.csv"
    path.write_text("code,result_status,fhir_status\nFinal,Q,final\n")
    with pytest.raises(ConfigError) as err:
        load_status_table(path)
    assert str(path) in err.value.problems[0] and "'Final'" in err.value.problems[0]


def test_a_table_without_the_columns_is_refused(tmp_path: Path):
    path = tmp_path / "report_status.csv"
    path.write_text("code,status\nF,final\n")
    with pytest.raises(ConfigError):
        load_status_table(path)


@pytest.mark.parametrize(("codes", "derived"), [
    (["F", "F"], "F"), (["F", "C"], "C"), (["F", "P"], "P"), (["R"], "P"), (["I", "F"], "P"), (["s"], "P"),
    (["U"], "F"), (["X"], "X"), (["F", "X"], "F"), (["", "F "], "F"), (["C", "P"], "C"),
    ([], ""), ([""], ""), (["D", "W", "N", "O"], ""), (["Z"], ""),
])
def test_obx_11_values_give_the_report_status_by_hl7_table_0085(codes: list[str], derived: str):
    assert derive_status(codes) == derived


def test_a_derived_status_is_read_through_the_site_table_and_said():
    status, note = read_derived(SHIPPED, ["F", "C", "F"])
    assert (status.result_status, status.fhir_status) == ("C", "corrected")
    assert note == "OBR-25 empty: status C derived from OBX-11 (F, C)"


def test_no_readable_obx_11_with_obr_25_empty_is_ae_101_at_obr_25():
    with pytest.raises(HL7ApplicationError) as err:
        read_derived(SHIPPED, ["", "D"], sequence=2)
    assert err.value.code == 101 and str(err.value.location) == "OBR^2^25"


@pytest.mark.parametrize(("codes", "derived"), [(["A"], "C"), (["F", "A"], "C"), (["a ", "P"], "C"), (["B", "F"], "C")])
def test_obx_11_amended_and_appended_are_a_correction(codes: list[str], derived: str):
    """hl7fix6: OBX-11 A (amended, table 0085 in v2.6+) was ignored: ["F", "A"] derived F, ["A"] nothing (AE 101).
    B (appended, v2.7+) is a change to a given result too."""
    assert derive_status(codes) == derived
