"""Evaluating compiled rules: source → transforms → table → default → required.

The order of the steps is fixed (docs/mapping.md "How a rule is evaluated"):
the first non-empty source value is taken, transforms run left to right, a
code-table lookup maps the result, ``default`` fills an empty value, and a
``required`` rule that is still empty raises HL7 error 101 at the source's
ERR location (HL7 v2.5.1 2.15.5, table 0357).

The explicit null ``""`` (engine.mapping.null) is weaker than a value and
stronger than nothing: the first filled source wins, and only when none is
filled does a null one make the rule's value :data:`NULL`. Transforms and
tables pass a null through; ``default`` fills it like an empty value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from engine.errors import ErrorLocation, HL7ApplicationError
from engine.hl7.er7 import Segment, Separators
from engine.mapping.null import NULL
from engine.mapping.result import RawProvenance
from engine.mapping.sources import Context, SourceRef
from engine.mapping.transforms import Transform, TransformContext

__all__ = [
    "BoundTransform",
    "CompiledCondition",
    "CompiledRule",
    "Lookup",
    "evaluate_rule",
    "kept_values",
    "plain_rule",
]

Value = Any
EMPTY: tuple[str, ...] = ("", '""')


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    """A compiled ``when`` test."""

    source: SourceRef
    equals: str | None = None
    in_: frozenset[str] | None = None
    not_in: frozenset[str] | None = None
    matches: re.Pattern[str] | None = None
    present: bool | None = None

    def holds(self, ctx: Context) -> bool:
        """True when every given test passes for the source's first value."""
        values = self.source.read(ctx)
        value = values[0] if values else ""
        return not (
            (self.equals is not None and value != self.equals)
            or (self.in_ is not None and value not in self.in_)
            or (self.not_in is not None and value in self.not_in)
            or (self.matches is not None and not self.matches.fullmatch(value))
            or (self.present is not None and bool(value) != self.present)
        )


@dataclass(frozen=True, slots=True)
class BoundTransform:
    """A transform with its arguments from the mapping file."""

    transform: Transform
    args: tuple[Any, ...]
    context: TransformContext

    def apply(self, value: Value, seps: Separators) -> Value:
        """Run on ``value``; element-wise on lists unless the transform takes lists. A null passes."""
        if value is NULL:
            return NULL
        fn, args, tctx = self.transform.fn, self.args, self.context
        if seps is not tctx.seps and seps != tctx.seps:
            tctx = replace(tctx, seps=seps)
        if self.transform.on_list:
            return fn(value if isinstance(value, list) else [value], args, tctx)
        if isinstance(value, list):
            out: list[str] = []
            for item in value:
                result = fn(item, args, tctx)
                out.extend(result if isinstance(result, list) else [result])
            return out
        return fn(value, args, tctx)


@dataclass(frozen=True, slots=True)
class Lookup:
    """A compiled code-table lookup."""

    table: str
    index: dict[tuple[str, ...], str]
    keys: tuple[SourceRef, ...]  # empty: the rule's value is the key
    on_missing: Literal["error", "default", "keep", "empty"]
    file: str = ""  # the table's file name, for errors (``order_control_status.csv``)

    def apply(self, value: Value, ctx: Context, default: str | None) -> Value:
        """Map ``value`` (or the key paths' values) through the table; a null value passes."""
        if value is NULL and not self.keys:
            return NULL
        if self.keys:
            key = tuple([k.first(ctx) for k in self.keys])
            return self._one(key, "", default, ctx)
        if isinstance(value, list):
            return [self._one((v,), v, default, ctx) for v in value if v]
        return self._one((value,), value, default, ctx) if value else value

    def _one(self, key: tuple[str, ...], value: str, default: str | None, ctx: Context) -> str:
        found = self.index.get(key)
        if found is not None:
            return found
        if self.on_missing == "error":
            where = self.keys[0].location(ctx) if self.keys else None
            raise HL7ApplicationError(103, f"{self._shown(key)} is not in {self.file or self.table}", where)
        if self.on_missing == "keep":
            return value
        if self.on_missing == "default":
            return default or ""
        return ""


    def _shown(self, key: tuple[str, ...]) -> str:
        """``ORC-1 'CA' with ORC-5 empty``: each key field by name, an empty one said so."""
        if not self.keys:
            return repr(key[0])
        pairs = zip(self.keys, key, strict=True)
        parts = [f"{ref.text} {value!r}" if value else f"{ref.text} empty" for ref, value in pairs]
        return " with ".join(parts)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One target field's rule, ready to evaluate."""

    target: str
    describe: str
    sources: tuple[SourceRef, ...] = ()
    const: str | None = None
    first: tuple[CompiledRule, ...] = ()
    conditions: tuple[CompiledCondition, ...] = ()
    transforms: tuple[BoundTransform, ...] = ()
    lookup: Lookup | None = None
    default: str | None = None
    required: bool = False
    each: SourceRef | None = None
    fields: tuple[CompiledRule, ...] | None = None
    plain: bool = False  # only single-valued paths, default and required (see _plain)


class _Skip:
    """Marker: the rule's ``when`` did not hold, the field is left out."""


SKIP = _Skip()


def _raw(
    rule: CompiledRule, ctx: Context, out: list[RawProvenance], prefix: str
) -> tuple[Value, str, SourceRef | None]:
    if rule.const is not None:
        return rule.const, "const", None
    null: tuple[str, SourceRef | None] | None = None
    for sub in rule.first:
        if sub.plain:
            value = plain_rule(sub, ctx, out, prefix, False)
        else:
            value = evaluate_rule(sub, ctx, out, prefix, record=False)
        if not isinstance(value, _Skip) and _filled(value):
            return value, sub.describe, sub.sources[0] if sub.sources else None
        if value is NULL and null is None:
            null = (sub.describe, sub.sources[0] if sub.sources else None)
    for source in rule.sources:
        value = kept_values(source.read(ctx)) if source.multi else source.first(ctx)
        if _filled(value):
            return value, source.text, source
        if value is NULL and null is None:
            null = (source.text, source)
    if null is not None:
        return NULL, f"{null[0]} (null)", null[1]
    return "", rule.sources[0].text if rule.sources else "", None


def kept_values(values: list[str]) -> Value:
    """The filled values a multi-valued path reads; NULL when there are none and one was null."""
    kept = [v for v in values if v not in EMPTY]
    if kept or not any(v is NULL for v in values):
        return kept
    return NULL


def _filled(value: Value) -> bool:
    return bool(value) and value not in EMPTY


def _error_location(rule: CompiledRule, ctx: Context) -> ErrorLocation | None:
    """Where ERR-2 points: the first source whose segment is present, else the first source."""
    refs = rule.sources or (rule.lookup.keys if rule.lookup else ())
    if not refs and rule.first:
        refs = tuple(r for sub in rule.first for r in sub.sources)
    found = [loc for loc in (r.location(ctx) for r in refs) if loc is not None]
    for loc in found:
        if ctx.scope.get(loc.segment):
            return loc
    return found[0] if found else None


def _transformed(rule: CompiledRule, value: Value, ctx: Context, ref: SourceRef | None) -> Value:
    try:
        for bound in rule.transforms:
            value = bound.apply(value, ctx.seps)
    except HL7ApplicationError as exc:
        where = exc.location or (ref.location(ctx) if ref else None) or _error_location(rule, ctx)
        raise HL7ApplicationError(exc.code, f"{rule.target}: {exc.text}", where) from exc
    return value


def evaluate_rule(
    rule: CompiledRule, ctx: Context, out: list[RawProvenance], prefix: str, *, record: bool = True
) -> Value:
    """The value of ``rule`` in ``ctx``; provenance of recorded fields is appended to ``out``."""
    if rule.plain:
        return plain_rule(rule, ctx, out, prefix, record)
    if rule.conditions and not all(c.holds(ctx) for c in rule.conditions):
        return SKIP
    if rule.fields is not None:
        return _objects(rule, ctx, out, prefix)
    value, source, ref = _raw(rule, ctx, out, prefix)
    value = _transformed(rule, value, ctx, ref)
    if rule.lookup is not None:
        value = rule.lookup.apply(value, ctx, rule.default)
        if ctx.provenance:
            table = rule.lookup.table
            source = f"{source} via table {table}" if source else f"table {table}"
    if not _filled(value) and rule.default is not None:
        value, source = rule.default, "default"
    if rule.required and not _filled(value):
        raise HL7ApplicationError(
            101, f"{rule.target} is required ({rule.describe})", _error_location(rule, ctx)
        )
    if record and ctx.provenance:
        out.append((prefix + rule.target, source, rule.describe, value, ctx.output))
    return value


def plain_rule(
    rule: CompiledRule, ctx: Context, out: list[RawProvenance], prefix: str, record: bool
) -> Value:
    """Paths (single-valued), default and required only: the common rule, kept cheap."""
    value = ""
    source = ""
    null = ""
    for ref in rule.sources:
        value = ref.first(ctx)
        if value and value != '""':
            source = ref.text
            break
        if value is NULL and not null:
            null = ref.text
    else:
        value, source = (NULL, f"{null} (null)") if null else ("", "")
        if rule.default is not None:
            value, source = rule.default, "default"
        elif rule.required:
            raise HL7ApplicationError(
                101, f"{rule.target} is required ({rule.describe})", _error_location(rule, ctx)
            )
    if record and ctx.provenance:
        out.append(
            (
                prefix + rule.target if prefix else rule.target,
                source,
                rule.describe,
                value,
                ctx.output,
            )
        )
    return value


def _objects(rule: CompiledRule, ctx: Context, out: list[RawProvenance], prefix: str) -> Value:
    assert rule.fields is not None
    if rule.each is None:
        obj = _object(rule.fields, ctx, out, f"{prefix}{rule.target}.")
        if rule.required and not obj:
            raise HL7ApplicationError(101, f"{rule.target} is required", _error_location(rule, ctx))
        return obj or None
    items: list[dict[str, Any]] = []
    for index, item in enumerate(rule.each.items(ctx)):
        if isinstance(item, Segment):  # each over segments: its paths read the current one
            inner = ctx.for_item({**ctx.scope, item.name: [item]}, None, None)
        else:
            inner = ctx.for_item(ctx.scope, item if isinstance(item, str) else None, item)
        obj = _object(rule.fields, inner, out, f"{prefix}{rule.target}[{index}].")
        if obj:
            items.append(obj)
    return items


def _object(
    fields: tuple[CompiledRule, ...], ctx: Context, out: list[RawProvenance], prefix: str
) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    filled = False
    for sub in fields:
        value = (
            plain_rule(sub, ctx, out, prefix, True)
            if sub.plain
            else evaluate_rule(sub, ctx, out, prefix)
        )
        if isinstance(value, _Skip):
            continue
        obj[sub.target] = value
        filled = filled or _filled(value)
    return obj if filled else {}
