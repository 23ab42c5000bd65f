"""Golden cases: ``mappings/tests/<mapping>/<case>.hl7`` (or ``.input.json``) beside
``<case>.expected.json``.

The expected file holds either ``{"records": [...]}`` or, for a message the
mapping must refuse, ``{"error": {"code": 101, "location": "OBR^1^18"}}``
(``text`` may be added and is then compared too). HL7 inputs are read as
bytes and decoded by MSH-18 exactly like the listener does
(``engine.hl7.charset``), so a Latin-1 case tests the real path.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import HL7Error
from engine.hl7.charset import decode
from engine.hl7.er7 import Message
from engine.mapping.compiled import CompiledMapping

__all__ = ["CaseOutcome", "GoldenCase", "discover", "read_input", "run_case", "run_output"]

_INPUTS = (".hl7", ".input.json")


@dataclass(frozen=True, slots=True)
class GoldenCase:
    """One input file and the expected file beside it."""

    mapping: str
    name: str
    input_path: Path
    expected_path: Path


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    """The result of one case: passed, and a unified diff when not."""

    case: GoldenCase
    passed: bool
    actual: dict[str, Any]
    diff: str = ""


def discover(mappings_dir: Path) -> list[GoldenCase]:
    """Every case under ``mappings_dir/tests``, sorted by mapping and case."""
    root = mappings_dir / "tests"
    cases: list[GoldenCase] = []
    if not root.is_dir():
        return cases
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            suffix = next((s for s in _INPUTS if path.name.endswith(s)), None)
            if suffix is None:
                continue
            name = path.name[: -len(suffix)]
            cases.append(GoldenCase(folder.name, name, path, folder / f"{name}.expected.json"))
    return cases


def read_input(path: Path) -> Message | Any:
    """An HL7 message (decoded by MSH-18) or the JSON object of a record/DICOM input."""
    if path.name.endswith(".input.json"):
        return json.loads(path.read_text(encoding="utf-8"))
    return Message(decode(path.read_bytes()).text)


def run_output(mapping: CompiledMapping, source: Message | Any) -> dict[str, Any]:
    """``{"records": [...]}``, or ``{"error": {...}}`` when the mapping refuses the input."""
    try:
        result = mapping.apply(source) if isinstance(source, Message) else mapping.apply_to(source)
    except HL7Error as exc:
        error: dict[str, Any] = {"code": exc.code, "location": str(exc.location or "")}
        error["text"] = exc.text
        return {"error": error}
    return {"records": result.records}


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _comparable(actual: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """Leave out an error's text when the expected file does not pin it."""
    if "error" in actual and "error" in expected and "text" not in expected["error"]:
        return {"error": {k: v for k, v in actual["error"].items() if k != "text"}}
    return actual


def run_case(case: GoldenCase, mapping: CompiledMapping, *, update: bool = False) -> CaseOutcome:
    """Run one case; with ``update`` the expected file is (re)written from the actual output."""
    actual = run_output(mapping, read_input(case.input_path))
    if update or not case.expected_path.exists():
        if update:
            case.expected_path.write_text(_dump(actual), encoding="utf-8")
            return CaseOutcome(case, True, actual)
        return CaseOutcome(case, False, actual, f"missing {case.expected_path.name}\n")
    expected = json.loads(case.expected_path.read_text(encoding="utf-8"))
    shown = _comparable(actual, expected)
    if shown == expected:
        return CaseOutcome(case, True, actual)
    diff = difflib.unified_diff(
        _dump(expected).splitlines(keepends=True),
        _dump(shown).splitlines(keepends=True),
        fromfile=str(case.expected_path),
        tofile="actual",
    )
    return CaseOutcome(case, False, actual, "".join(diff))
