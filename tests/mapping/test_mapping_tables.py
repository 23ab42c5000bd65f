"""Code tables (engine.mapping.tables)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.mapping.tables import load_table, load_tables

from .conftest import MAPPINGS_DIR, write


def test_csv_table_skips_comments_and_indexes_keys(tmp_path: Path) -> None:
    table = load_table(write(tmp_path, "t.csv", "# note\na,b,c\nNW,,S\nNW,SC,T\n"))
    assert table.index(2, "c") == {("NW", ""): "S", ("NW", "SC"): "T"}


def test_yaml_mapping_table_has_code_and_value(tmp_path: Path) -> None:
    table = load_table(write(tmp_path, "t.yaml", "S: STAT\nR: ROUTINE\n"))
    assert table.columns == ("code", "value") and table.index(1, "value")[("S",)] == "STAT"


def test_yaml_row_table(tmp_path: Path) -> None:
    table = load_table(write(tmp_path, "t.yaml", "- {m: CT, ae: CT1}\n- {m: MR, ae: MR1}\n"))
    assert table.index(1, "ae")[("MR",)] == "MR1"


def test_ragged_csv_row_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"t\.csv:3: row has 1 cells"):
        load_table(write(tmp_path, "t.csv", "a,b\nx,y\nz\n"))


def test_one_column_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="two columns"):
        load_table(write(tmp_path, "t.csv", "a\nx\n"))


def test_shipped_order_control_table_follows_the_reference() -> None:
    table = load_tables(MAPPINGS_DIR / "tables")["order_control_status"]
    assert table.columns == ("order_control", "order_status", "sps_status")
    index = table.index(2, "sps_status")
    assert index[("NW", "")] == "SCHEDULED"
    assert index[("DC", "CA")] == "DISCONTINUED"
    assert index[("SC", "A")] == "COMPLETED"
    assert ("NW", "CA") not in index


def test_shipped_priority_table() -> None:
    index = load_tables(MAPPINGS_DIR / "tables")["priority"].index(1, "priority")
    assert [index[(c,)] for c in "SAPCRT"] == ["STAT", "HIGH", "HIGH", "HIGH", "ROUTINE", "MEDIUM"]


def test_shipped_charset_table() -> None:
    index = load_tables(MAPPINGS_DIR / "tables")["hl7_charset_dicom"].index(
        1, "specific_character_set"
    )
    assert index[("8859/1",)] == "ISO_IR 100" and index[("UNICODE UTF-8",)] == "ISO_IR 192"


def test_one_bad_row_in_one_table_is_the_only_problem_the_shipped_mappings_report(tmp_path: Path) -> None:
    """A short row in procedure_codes.csv made every table reference of every mapping "unknown table 'sex'
    (none are defined)": 15 problems for one (new-user campaign, `radbridge check-config`)."""
    import shutil

    from engine.mapping import load_mappings

    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS_DIR, mappings)
    with (mappings / "tables" / "procedure_codes.csv").open("a") as out:
        out.write("BADROW\n")

    with pytest.raises(ConfigError) as caught:
        load_mappings(mappings)

    (problem,) = caught.value.problems
    assert problem.startswith(f"{mappings / 'tables' / 'procedure_codes.csv'}:") and "row has 1 cells" in problem
