"""``radbridge mapping check | test | verify`` through argparse, as the core CLI wires it."""

from __future__ import annotations

import argparse
import json
from io import StringIO
from pathlib import Path

import pytest

from engine.mapping import cli

from .conftest import MAPPINGS_DIR, write

CASE = MAPPINGS_DIR / "tests/order-to-worklist/orm_o01_nw_ct.hl7"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="radbridge")
    cli.add_subcommands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_subcommands_are_wired() -> None:
    args = parse(["mapping", "verify", "--mappings", str(MAPPINGS_DIR)])
    assert args.mapping_command == "verify" and callable(args.fn)


def test_check_accepts_the_shipped_mappings() -> None:
    out = StringIO()
    assert cli.check(MAPPINGS_DIR, out=out) == 0
    assert "6 mapping(s)" in out.getvalue()


def test_check_reports_file_line_and_suggestion(tmp_path: Path) -> None:
    write(
        tmp_path,
        "m.yaml",
        "source: hl7v2\ntarget: record\noutputs:\n  - record: ordr\n    fields: {}\n",
    )
    out = StringIO()
    assert cli.check(tmp_path, out=out) == 1
    assert (
        "m.yaml:4: outputs.0.record:" in out.getvalue()
        and "did you mean 'order'?" in out.getvalue()
    )


def test_test_shows_values_with_their_source(capsys: pytest.CaptureFixture[str]) -> None:
    out = StringIO()
    assert cli.test("order-to-worklist", CASE, MAPPINGS_DIR, out=out) == 0
    text = out.getvalue()
    assert "[0] patient" in text and "[1] order" in text
    line = next(line for line in text.splitlines() if line.strip().startswith("priority"))
    assert '"STAT"' in line and "ORC-7.6 via table priority" in line


def test_test_json_has_provenance() -> None:
    out = StringIO()
    assert cli.test("order-to-worklist", CASE, MAPPINGS_DIR, as_json=True, out=out) == 0
    data = json.loads(out.getvalue())
    acc = next(p for p in data["provenance"] if p["target"] == "accession_number")
    assert (acc["source"], acc["value"]) == ("OBR-18.1", "ACC-24-0417")


def test_test_shows_the_error_for_a_refused_message() -> None:
    out = StringIO()
    bad = MAPPINGS_DIR / "tests/order-to-worklist/orm_o01_missing_patient_id.hl7"
    assert cli.test("order-to-worklist", bad, MAPPINGS_DIR, out=out) == 1
    assert "ERROR 101 at PID^1^3^1" in out.getvalue()


def test_test_takes_a_mapping_path_and_json_input() -> None:
    out = StringIO()
    source = MAPPINGS_DIR / "tests/order-to-mwl/nw_ct_head.input.json"
    assert cli.test(str(MAPPINGS_DIR / "order-to-mwl.yaml"), source, MAPPINGS_DIR, out=out) == 0
    assert "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus" in out.getvalue()


def test_schema_prints_the_shipped_schema() -> None:
    out = StringIO()
    assert cli.schema(out=out) == 0
    shipped = (MAPPINGS_DIR.parent / "docs" / "mapping.schema.json").read_text(encoding="utf-8")
    assert json.loads(out.getvalue()) == json.loads(shipped)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/nonexistent/x.yaml", "/nonexistent/x.yaml: no such mapping file"),
        ("no-such-mapping", "no-such-mapping: no such mapping file, nor a mapping named so in"),
    ],
)
def test_test_names_a_missing_mapping_without_a_traceback(name: str, expected: str) -> None:
    out = StringIO()
    assert cli.test(name, CASE, MAPPINGS_DIR, out=out) == 1
    assert out.getvalue().startswith(expected)


def test_test_names_a_missing_message_file_without_a_traceback(tmp_path: Path) -> None:
    out = StringIO()
    missing = tmp_path / "absent.hl7"
    assert cli.test("order-to-worklist", missing, MAPPINGS_DIR, out=out) == 1
    assert out.getvalue() == f"{missing}: cannot read: No such file or directory\n"
