"""Compiling a validated mapping file into :class:`CompiledMapping`.

All problems of a file are collected, each as ``file:line: field: message
(suggestion)``, and raised together as one ConfigError: a file with any
problem is never applied.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from engine.config.loader import Located, load_yaml
from engine.errors import ConfigError
from engine.mapping.checks import check_dicom_path, check_hl7_path, suggest
from engine.mapping.codegen import generate
from engine.mapping.compiled import CompiledMapping, CompiledOutput
from engine.mapping.evaluate import BoundTransform, CompiledCondition, CompiledRule, Lookup
from engine.mapping.model import Condition, MappingFile, Output, Rule, RuleSpec, TableRef
from engine.mapping.paths import PathSyntaxError, parse_hl7_path
from engine.mapping.sources import Hl7Ref, ObjectRef, SourceRef, VarRef, parse_object_path
from engine.mapping.tables import CodeTable
from engine.mapping.targetnames import TargetNames
from engine.mapping.transforms import (
    STANDARD_SEPARATORS,
    TransformContext,
    get_transform,
    transform_names,
)

__all__ = ["compile_file"]

Loc = tuple[str | int, ...]
_MESSAGE_TYPE = re.compile(r"^[A-Z][A-Z0-9]{2}\^[A-Z0-9]{3}$")


class _Compiler:
    """Holds the file being compiled and the problems found so far."""

    def __init__(
        self, located: Located, spec: MappingFile, tables: dict[str, CodeTable], tz: ZoneInfo
    ):
        self.located = located
        self.spec = spec
        self.tables = tables
        self.tz = tz
        self.problems: list[str] = []
        self.var_names: set[str] = set()
        self.relative_ok = False

    def problem(self, loc: Loc, message: str) -> None:
        field = ".".join(str(p) for p in loc) or "(document)"
        self.problems.append(f"{self.located.path}:{self.located.line_of(loc)}: {field}: {message}")

    def source(self, text: str, loc: Loc) -> SourceRef | None:
        """Parse and check one source path."""
        text = text.strip()
        if text.startswith("$"):
            if text[1:] not in self.var_names:
                self.problem(loc, f"unknown variable {text} ({suggest(text[1:], self.var_names)})")
                return None
            return VarRef(text[1:], text)
        try:
            if self.spec.source == "hl7v2":
                return self._hl7_source(text, loc)
            return self._object_source(text, loc)
        except PathSyntaxError as exc:
            self.problem(loc, str(exc))
            return None

    def _hl7_source(self, text: str, loc: Loc) -> SourceRef | None:
        path = parse_hl7_path(text)
        if path.relative and not self.relative_ok:
            self.problem(
                loc, f"relative path {text} outside an each (write the segment, e.g. PID-3.1)"
            )
            return None
        issue = check_hl7_path(path, self.spec.hl7_version)
        if issue:
            self.problem(loc, issue)
            return None
        return Hl7Ref(path, text)

    def _object_source(self, text: str, loc: Loc) -> SourceRef | None:
        relative = text == "item" or text.startswith("item.")
        if relative and not self.relative_ok:
            self.problem(loc, f"relative path {text} outside an each")
            return None
        steps = parse_object_path(text[5:] if relative else text) if text != "item" else ()
        if self.spec.source == "dicom":
            issue = check_dicom_path(steps)
            if issue:
                self.problem(loc, issue)
                return None
        elif not relative:
            issue = TargetNames.record_source_problem(steps)
            if issue:
                self.problem(loc, issue)
                return None
        return ObjectRef(steps, text, relative)

    def sources(self, paths: str | list[str], loc: Loc) -> tuple[SourceRef, ...]:
        items = [paths] if isinstance(paths, str) else paths
        refs = [
            self.source(p, (*loc, i) if isinstance(paths, list) else loc)
            for i, p in enumerate(items)
        ]
        return tuple(r for r in refs if r is not None)

    def conditions(
        self, when: Condition | list[Condition] | None, loc: Loc
    ) -> tuple[CompiledCondition, ...]:
        if when is None:
            return ()
        items = when if isinstance(when, list) else [when]
        out = []
        for i, cond in enumerate(items):
            here = (*loc, i) if isinstance(when, list) else loc
            ref = self.source(cond.field, (*here, "field"))
            pattern = self._regex(cond.matches, (*here, "matches"))
            if ref is not None:
                out.append(CompiledCondition(
                    ref, cond.equals,
                    frozenset(cond.in_) if cond.in_ is not None else None,
                    frozenset(cond.not_in) if cond.not_in is not None else None,
                    pattern, cond.present,
                ))  # fmt: skip
        return tuple(out)

    def _regex(self, text: str | None, loc: Loc) -> re.Pattern[str] | None:
        if text is None:
            return None
        try:
            return re.compile(text)
        except re.error as exc:
            self.problem(loc, f"invalid regular expression: {exc}")
            return None

    def transforms(
        self, items: list[str | dict[str, Any]], loc: Loc, vr: str | None
    ) -> tuple[BoundTransform, ...]:
        out = []
        for i, item in enumerate(items):
            here = (*loc, i)
            if isinstance(item, dict) and len(item) != 1:
                self.problem(here, "write a transform as a name or {name: arguments}")
                continue
            name, raw = (item, None) if isinstance(item, str) else next(iter(item.items()))
            args = () if raw is None else tuple(raw) if isinstance(raw, list) else (raw,)
            found = get_transform(name)
            if found is None:
                self.problem(
                    here, f"unknown transform {name!r} ({suggest(name, transform_names())})"
                )
                continue
            if not found.min_args <= len(args) <= found.max_args:
                want = f"{found.min_args}" + (
                    f"-{found.max_args}" if found.max_args != found.min_args else ""
                )
                self.problem(here, f"{name} takes {want} argument(s), got {len(args)}")
                continue
            if name == "replace":
                self._regex(str(args[0]), here)
            if name == "ts_to_da" and args and args[0] != "keep":  # else silently AE 102 on a year-only date
                self.problem(here, f"ts_to_da takes no argument or 'keep', got {args[0]!r}")
                continue
            out.append(
                BoundTransform(found, args, TransformContext(STANDARD_SEPARATORS, self.tz, vr))
            )
        return tuple(out)

    def lookup(self, table: str | TableRef | None, loc: Loc) -> Lookup | None:
        if table is None:
            return None
        ref = TableRef.model_validate({"name": table}) if isinstance(table, str) else table
        here = loc if isinstance(table, str) else (*loc, "name")
        found = self.tables.get(ref.name)
        if found is None:
            self.problem(here, f"unknown table {ref.name!r} ({suggest(ref.name, self.tables)})")
            return None
        keys = self.sources(ref.key, (*loc, "key")) if ref.key else ()
        count = len(ref.key) if ref.key else 1
        column = ref.column or (found.columns[count] if count < len(found.columns) else "")
        if column not in found.columns[count:]:
            self.problem(loc, f"table {ref.name} has no result column {column!r} "
                              f"(columns: {', '.join(found.columns)})")  # fmt: skip
            return None
        return Lookup(ref.name, found.index(count, column), keys, ref.on_missing, found.path.name)

    def rule(self, spec: RuleSpec, loc: Loc, target: str, names: TargetNames) -> CompiledRule:
        """Compile one rule (a bare string is a path)."""
        rule = spec if isinstance(spec, Rule) else Rule.model_validate({"path": spec})
        vr = names.vr(target)
        fields = None
        each = None
        if rule.fields is not None:
            each = self.source(rule.each, (*loc, "each")) if rule.each else None
            inner = names.nested(target)
            saved, self.relative_ok = self.relative_ok, self.relative_ok or rule.each is not None
            fields = self.fields(rule.fields, (*loc, "fields"), inner)
            self.relative_ok = saved
        first = tuple(
            self.rule(sub, (*loc, "first", i), target, names)
            for i, sub in enumerate(rule.first or [])
        )
        compiled = CompiledRule(
            target=target, describe=describe(rule),
            sources=self.sources(rule.path, (*loc, "path")) if rule.path is not None else (),
            const=rule.const, first=first,
            conditions=self.conditions(rule.when, (*loc, "when")),
            transforms=self.transforms(rule.transform, (*loc, "transform"), vr),
            lookup=self.lookup(rule.table, (*loc, "table")),
            default=rule.default, required=rule.required, each=each, fields=fields,
        )  # fmt: skip
        return replace(compiled, plain=_is_plain(compiled))

    def fields(
        self, specs: dict[str, RuleSpec], loc: Loc, names: TargetNames
    ) -> tuple[CompiledRule, ...]:
        out = []
        for target, spec in specs.items():
            issue = names.problem(target)
            if issue:
                self.problem((*loc, target), issue)
            out.append(self.rule(spec, (*loc, target), target, names))
        missing = names.missing_required(specs)
        if missing:
            self.problem(
                loc, f"required by the record contract but not mapped: {', '.join(missing)}"
            )
        return tuple(out)

    def output(self, spec: Output, loc: Loc) -> CompiledOutput:
        names = TargetNames.for_output(self.spec.target, spec, self, loc)
        self.var_names = set()
        # An output's when is decided before its vars are computed, so it cannot use them.
        conditions = self.conditions(spec.when, (*loc, "when"))
        variables = []
        for name, var in spec.vars.items():
            variables.append(self.rule(var, (*loc, "vars", name), name, TargetNames.free()))
            self.var_names.add(name)
        if spec.for_each is not None and self.spec.source == "hl7v2":
            self._hl7_source(f"{spec.for_each}-1", (*loc, "for_each"))
        for n, name in enumerate(spec.until or ()):
            if spec.for_each is None or self.spec.source != "hl7v2":
                self.problem((*loc, "until"), "until needs for_each over an HL7 v2 source")
                break
            self.source(f"{name}-1", (*loc, "until", n))
        fields = self.fields(spec.fields, (*loc, "fields"), names)
        compiled = CompiledOutput(
            kind=self.spec.target, name=spec.record or spec.resource or "",
            for_each=spec.for_each, conditions=conditions,
            vars=tuple(variables), fields=fields,
            steps=names.steps, hl7_targets=names.hl7_paths,
            segment_order=tuple(spec.segment_order or ()),
            fhir_model=names.model if self.spec.target == "fhir" else None,
            until=tuple(spec.until or ()),
        )  # fmt: skip
        # HL7 v2 -> records (every inbound message) and records -> HL7 v2 (every ORU^R01 out).
        generated = (self.spec.source, compiled.kind) in (("hl7v2", "record"), ("record", "hl7v2"))
        if not generated or self.problems:
            return compiled
        return replace(compiled, fast=generate(compiled, self.located.path.stem))

    def check_accept(self) -> None:
        for i, kind in enumerate(self.spec.accept):
            if not _MESSAGE_TYPE.match(kind):
                self.problem(("accept", i), f"{kind!r} is not a message type like ORM^O01")


def _is_plain(rule: CompiledRule) -> bool:
    """True when only single-valued paths, default and required are used (the fast path)."""
    return bool(rule.sources) and not (
        any(s.multi for s in rule.sources) or rule.const is not None or rule.first
        or rule.conditions or rule.transforms or rule.lookup or rule.fields is not None
    )  # fmt: skip


def describe(rule: Rule) -> str:
    """A one-line description of a rule for provenance, ``mapping test`` and the ACK of a missing value."""
    parts: list[str] = []
    if rule.path is not None:
        paths = [rule.path] if isinstance(rule.path, str) else rule.path
        parts.append(("first of " if len(paths) > 1 else "") + " | ".join(paths))
    if rule.const is not None:
        parts.append(f"const {rule.const!r}")
    if rule.first:
        parts.append(f"first of {len(rule.first)} rules")
    if rule.fields is not None:
        parts.append(f"each {rule.each}" if rule.each else "object")
    for t in rule.transform:
        parts.append(t if isinstance(t, str) else ", ".join(f"{k} {v}" for k, v in t.items()))
    if rule.table is not None:
        name = rule.table if isinstance(rule.table, str) else rule.table.name
        parts.append(f"table {name}")
    if rule.default is not None:
        parts.append(f"default {rule.default!r}")
    if rule.required:
        parts.append("required")
    text = " -> ".join(parts)  # ASCII: it is in the error text of an ACK, which may be 8859/1 (MSH-18 absent)
    return f"{text} ({rule.note})" if rule.note else text


def _timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            [f"timezone: {name!r} is not an IANA time zone (e.g. Europe/Paris)"]
        ) from exc


_UNION_TAG = re.compile(
    r"^(function-\w+\[.*\]|str|list\[str\]|Rule|Condition|TableRef|list\[.*\])$"
)


_SHAPE = "write a path (PID-3.1), a list of paths, or a rule with path/const/first/fields"
_BRANCH_TYPES = ("string_type", "model_type", "list_type", "dict_type", "model_attributes_type")


def _validate(located: Located) -> MappingFile:
    """Validate the document; union branches are folded so each problem is said once."""
    try:
        return MappingFile.model_validate(located.data)
    except ValidationError as exc:
        errors = [
            (tuple(p for p in err["loc"] if not _UNION_TAG.match(str(p))), err)
            for err in exc.errors()
        ]
        seen: dict[tuple[str | int, ...], str] = {}
        for loc, err in errors:
            if err["type"] in _BRANCH_TYPES:
                if any(len(o) > len(loc) and o[: len(loc)] == loc for o, _ in errors):
                    continue
                seen.setdefault(loc, _SHAPE if "fields" in loc else err["msg"])
                continue
            seen.setdefault(loc, err["msg"].removeprefix("Value error, "))
        problems = []
        for loc, msg in seen.items():
            field = ".".join(str(p) for p in loc) or "(document)"
            problems.append(f"{located.path}:{located.line_of(loc)}: {field}: {msg}")
        raise ConfigError(problems) from exc


def compile_file(path: Path, tables: dict[str, CodeTable], timezone: str) -> CompiledMapping:
    """Load, validate and compile one mapping file; raise ConfigError with every problem."""
    located = load_yaml(path)
    spec = _validate(located)
    compiler = _Compiler(located, spec, tables, _timezone(timezone))
    compiler.check_accept()
    outputs = tuple(compiler.output(o, ("outputs", i)) for i, o in enumerate(spec.outputs))
    if compiler.problems:
        raise ConfigError(compiler.problems)
    return CompiledMapping(
        path.stem, spec.source, spec.target, frozenset(spec.accept), outputs, str(path)
    )
