"""``radbridge mapping check | test | verify | schema``: the analyst's tools.

The core CLI calls :func:`add_subcommands`; each subcommand's function
returns the process exit status (0 success, 1 failure) and writes to the
given stream, so tests call them directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from engine.errors import ConfigError
from engine.mapping import CompiledMapping, load_mapping, load_mappings
from engine.mapping.golden import discover, read_input, run_case, run_output
from engine.mapping.model import json_schema
from engine.mapping.tables import load_tables

__all__ = ["add_subcommands", "check", "schema", "test", "verify"]

_DEFAULT_DIR = Path("mappings")
_DIR_HELP = "directory of mapping files (default ./mappings)"
_TZ_HELP = "site time zone for HL7 times without an offset (default UTC)"


def add_subcommands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``mapping check``, ``mapping test`` and ``mapping verify`` to the radbridge CLI."""
    parser = sub.add_parser("mapping", help="check, test and verify mapping files")
    actions = parser.add_subparsers(dest="mapping_command", required=True)
    p_check = actions.add_parser("check", help="validate every mapping file and code table")
    p_check.add_argument("--mappings", type=Path, default=_DEFAULT_DIR, help=_DIR_HELP)
    p_check.add_argument("--timezone", default="UTC", help=_TZ_HELP)
    p_check.set_defaults(fn=lambda a: check(a.mappings, a.timezone))
    p_test = actions.add_parser(
        "test", help="apply a mapping to one message and explain each value"
    )
    p_test.add_argument("mapping", help="mapping name (file stem) or path to a mapping file")
    p_test.add_argument("message", type=Path, help="an .hl7 file, or .json for record/DICOM inputs")
    p_test.add_argument("--json", action="store_true", help="machine-readable output")
    p_test.add_argument("--mappings", type=Path, default=_DEFAULT_DIR, help=_DIR_HELP)
    p_test.add_argument("--timezone", default="UTC", help=_TZ_HELP)
    p_test.add_argument("--image", type=Path, help="dicom targets: a DICOM file to show what coercing it would change")
    p_test.set_defaults(fn=lambda a: test(a.mapping, a.message, a.mappings, a.json, a.timezone, image=a.image))
    p_verify = actions.add_parser("verify", help="run the golden cases in mappings/tests")
    p_verify.add_argument("--mappings", type=Path, default=_DEFAULT_DIR, help=_DIR_HELP)
    p_verify.add_argument("--timezone", default="UTC", help=_TZ_HELP)
    p_verify.add_argument("--update", action="store_true", help="rewrite expected files")
    p_verify.set_defaults(fn=lambda a: verify(a.mappings, a.timezone, update=a.update))
    p_schema = actions.add_parser("schema", help="print the JSON Schema of mapping files")
    p_schema.set_defaults(fn=lambda a: schema())


def schema(out: TextIO = sys.stdout) -> int:
    """Print the JSON Schema of mapping files (docs/mapping.schema.json)."""
    print(json.dumps(json_schema(), indent=2, ensure_ascii=False), file=out)
    return 0


def check(mappings_dir: Path, timezone: str = "UTC", out: TextIO = sys.stdout) -> int:
    """Validate every mapping and table; print each problem as file:line: field: message."""
    try:
        mappings = load_mappings(mappings_dir, timezone)
        tables = load_tables(mappings_dir / "tables")
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=out)
        print(f"{len(exc.problems)} problem(s); nothing will be applied", file=out)
        return 1
    print(f"{len(mappings)} mapping(s) and {len(tables)} table(s) OK in {mappings_dir}", file=out)
    return 0


def _resolve(name: str, mappings_dir: Path, timezone: str) -> CompiledMapping:
    """A mapping given as a file path, or by name (file stem) in ``mappings_dir``."""
    path = Path(name)
    if not path.is_file():
        by_name = mappings_dir / f"{name}.yaml"
        if path.suffix in (".yaml", ".yml"):
            raise ConfigError([f"{name}: no such mapping file"])
        if not by_name.is_file():
            raise ConfigError([f"{name}: no such mapping file, nor a mapping named so in {mappings_dir}"])
        path = by_name
    return load_mapping(path, tables_dir=mappings_dir / "tables", timezone=timezone)


def test(
    name: str,
    message: Path,
    mappings_dir: Path = _DEFAULT_DIR,
    as_json: bool = False,
    timezone: str = "UTC",
    out: TextIO = sys.stdout,
    image: Path | None = None,
) -> int:
    """Apply one mapping to one input and show, per target field, the source and rule.

    With ``image`` (a dicom-target mapping such as order-to-image), also what coercing
    that DICOM file to the output would change (engine.reconcile.preview).
    """
    try:
        mapping = _resolve(name, mappings_dir, timezone)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=out)
        return 1
    try:
        source = read_input(message)
    except OSError as exc:
        print(f"{message}: cannot read: {exc.strerror or exc}", file=out)
        return 1
    output = run_output(mapping, source)
    provenance = [] if "error" in output else _provenance(mapping, source)
    changes = _coercion(mapping, output, image)
    if as_json:
        extra = {"coercion": changes} if changes is not None else {}
        print(
            json.dumps({**output, "provenance": provenance, **extra}, indent=2, ensure_ascii=False), file=out
        )
    else:
        _print_text(output, provenance, out)
        if changes is not None:
            print(f"coercing {image}: {len(changes)} change(s)", file=out)
            for c in changes:
                print(f"  {c['keyword']:<32} {c['before']!r} -> {c['after']!r}", file=out)
    return 1 if "error" in output else 0


def _coercion(mapping: CompiledMapping, output: dict[str, Any], image: Path | None) -> list[dict[str, str]] | None:
    """What coercing ``image`` to the first output would change; None without an image or output."""
    if image is None or mapping.target != "dicom" or not output.get("records"):
        return None
    from engine.reconcile.preview import preview

    return [{"keyword": c.keyword, "before": c.before, "after": c.after}
            for c in preview(image, output["records"][0])]


def _provenance(mapping: CompiledMapping, source: Any) -> list[dict[str, Any]]:
    from engine.hl7.er7 import Message

    result = mapping.apply(source) if isinstance(source, Message) else mapping.apply_to(source)
    return [
        {
            "output": p.output,
            "target": p.target,
            "value": p.value,
            "source": p.source,
            "rule": p.rule,
        }
        for p in result.provenance
    ]


def _print_text(output: dict[str, Any], provenance: list[dict[str, Any]], out: TextIO) -> None:
    if "error" in output:
        err = output["error"]
        print(
            f"ERROR {err['code']} at {err['location'] or '(no location)'}: {err['text']}", file=out
        )
        return
    for index, record in enumerate(output["records"]):
        kind = record.get("record") or record.get("resourceType") or "output"
        print(f"[{index}] {kind}", file=out)
        for p in (p for p in provenance if p["output"] == index):
            value = json.dumps(p["value"], ensure_ascii=False)
            print(
                f"  {p['target']:<40} = {value:<30} from {p['source'] or '-'}  [{p['rule']}]",
                file=out,
            )


def verify(
    mappings_dir: Path = _DEFAULT_DIR, timezone: str = "UTC", *, update: bool = False,
    out: TextIO = sys.stdout,
) -> int:  # fmt: skip
    """Run every golden case; print a diff for each failure; 1 if any case fails."""
    try:
        mappings = load_mappings(mappings_dir, timezone)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=out)
        return 1
    failed = 0
    cases = discover(mappings_dir)
    for case in cases:
        mapping = mappings.get(case.mapping)
        if mapping is None:
            print(f"FAIL {case.mapping}/{case.name}: no mapping named {case.mapping}", file=out)
            failed += 1
            continue
        outcome = run_case(case, mapping, update=update)
        print(f"{'ok  ' if outcome.passed else 'FAIL'} {case.mapping}/{case.name}", file=out)
        if not outcome.passed:
            failed += 1
            print(outcome.diff, file=out)
    print(f"{len(cases) - failed} passed, {failed} failed", file=out)
    return 1 if failed else 0
