"""Record and HL7 v2 outputs generated as Python functions: the evaluator of the hot paths.

:mod:`engine.mapping.evaluate` interprets a compiled rule tree. It is the
reference: it records provenance (``radbridge mapping test``) and knows every
error and its ERR location. On a channel's receive path nobody reads the
provenance, and walking the rule tree for every field of every message costs
more than reading the values. So each ``record`` output of an HL7 v2 mapping
(every inbound message) and each ``hl7v2`` output of a record mapping (every
ORU^R01 out) is also written out, when the file is loaded, as one Python
function that reads its source directly (an HL7 output's values are then laid
out and escaped by the output's own ``_shape``, as the interpreter's are):

* every segment occurrence and field repetition a path reads is looked up once
  per output, not once per path;
* what the interpreter decides per message from the rule (is there a const, a
  ``first`` list, a transform, a table, a default?) is decided here, once;
* transforms, tables, conditions and ``each`` lists call the same compiled
  objects the interpreter calls.

The generated code only takes the paths it is sure of. Where the interpreter
would raise (a required value missing) it raises :class:`GiveUp`, and any
exception makes the caller evaluate that output again with the interpreter,
which then produces the real error with its location. A mapping is pure, so
running an output twice changes nothing. ``tests/mapping/test_codegen.py``
runs both on every shipped mapping with generated messages and requires the
same records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.hl7.er7 import Separators, unescape
from engine.mapping.evaluate import (
    EMPTY,
    SKIP,
    BoundTransform,
    CompiledCondition,
    CompiledRule,
    Lookup,
    _filled,
    _objects,
    kept_values,
)
from engine.mapping.null import CLEARED, HL7_NULL, NULL, null_or_empty
from engine.mapping.paths import read_repetition
from engine.mapping.sources import Context, Hl7Ref, SourceRef

if TYPE_CHECKING:
    from engine.mapping.compiled import CompiledOutput

__all__ = ["FastBuild", "GiveUp", "generate"]

log = logging.getLogger(__name__)

#: A generated output: the record for one scope, None when the output's ``when`` does not hold.
FastBuild = Callable[[Context], "dict[str, Any] | None"]

#: Nesting of alternatives beyond which an output is left to the interpreter.
_MAX_DEPTH = 40


class GiveUp(Exception):
    """The generated code met a case it leaves to the interpreter."""


class _Unsupported(Exception):
    """This output cannot be generated; the interpreter evaluates it."""


def _rep(fields: list[str] | None, n: int, rep: int, rsep: str) -> str:
    """Repetition ``rep`` (0-based) of field ``n`` as written ("" when absent)."""
    if fields is None or n >= len(fields):
        return ""
    value = fields[n]
    if not value:
        return ""
    if rsep in value:
        reps = value.split(rsep)
        return reps[rep] if rep < len(reps) else ""
    return "" if rep else value


def _leaf(value: str, seps: Separators, comp: int | None, sub: int | None) -> str:
    """Component/sub-component of a repetition, as :meth:`Hl7Ref.first` reads it."""
    if not value:
        return ""
    if sub is None and seps.component not in value and seps.subcomponent not in value:
        if value == HL7_NULL:
            return NULL
        if (comp or 1) > 1:
            return ""
        return unescape(value, seps) if seps.escape in value else value
    return read_repetition(value, seps, comp, sub)


def _direct(source: SourceRef) -> bool:
    """True for a single-valued path of a segment field that the generated code reads itself.

    Fields 1 and 2 qualify except in MSH/FHS/BHS, whose first two fields are the delimiters.
    """
    if not isinstance(source, Hl7Ref) or source.multi or source.path.relative or source._field < 1:
        return False
    return source._field > 2 or source._segment not in ("MSH", "FHS", "BHS")


def _part(value: str, seps: Separators) -> str:
    """A component already split off (comp >= 1, no sub-component asked): as read_repetition leaves it."""
    if seps.subcomponent in value:
        return value
    if value == HL7_NULL:
        return NULL
    return unescape(value, seps) if seps.escape in value else value


def _flat(value: Any) -> Any:
    if value and all(isinstance(v, str) for v in value):
        return "\\".join(value)
    return value


_HELPERS: dict[str, Any] = {
    "SKIP": SKIP,
    "EMPTY": EMPTY,
    "NULL": NULL,
    "_kept": kept_values,
    "_absent": null_or_empty,
    "GiveUp": GiveUp,
    "_filled": _filled,
    "_objects": _objects,
    "_rep": _rep,
    "_leaf": _leaf,
    "_part": _part,
    "_flat": _flat,
}


class _Writer:
    """Source text of one output's function, with the objects it refers to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.prologue: list[str] = []
        self.names: dict[str, Any] = {}
        self.by_id: dict[int, str] = {}
        self.segments: dict[tuple[str, int], str] = {}
        self.repetitions: dict[tuple[str, int, int, int], str] = {}
        self.split: dict[str, str] = {}
        self.count = 0

    def const(self, obj: Any) -> str:
        """A name bound to ``obj`` in the function's globals."""
        name = self.by_id.get(id(obj))
        if name is None:
            name = f"k{len(self.names)}"
            self.names[name] = obj
            self.by_id[id(obj)] = name
        return name

    def temp(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def line(self, depth: int, text: str) -> None:
        if depth > _MAX_DEPTH:
            raise _Unsupported("alternatives nested too deeply")
        self.lines.append("    " * depth + text)

    def repetition(self, ref: Hl7Ref) -> str:
        """The local holding the repetition ``ref`` reads, computed once in the prologue."""
        seg_key = (ref._segment, ref._index)
        seg = self.segments.get(seg_key)
        if seg is None:
            seg = f"s{len(self.segments)}"
            self.segments[seg_key] = seg
            self.prologue.append(f"_s = scope.get({ref._segment!r})")
            self.prologue.append(f"{seg} = _s[{ref._index}].fields if _s and {ref._index} < len(_s) else None")
        key = (ref._segment, ref._index, ref._field, ref._rep)
        rep = self.repetitions.get(key)
        if rep is None:
            rep = f"r{len(self.repetitions)}"
            self.repetitions[key] = rep
            if ref._rep:
                self.prologue.append(f"{rep} = _rep({seg}, {ref._field}, {ref._rep}, rsep)")
            else:  # the first repetition, inline (see _rep)
                field = ref._field
                self.prologue.append(f"{rep} = {seg}[{field}] if {seg} is not None and {field} < len({seg}) else ''")
                self.prologue.append(f"if rsep in {rep}:")
                self.prologue.append(f"    {rep} = {rep}.split(rsep, 1)[0]")
        return rep

    def components(self, rep: str) -> str:
        """The local holding ``rep`` split into components (None without a component separator)."""
        name = self.split.get(rep)
        if name is None:
            name = f"c{rep[1:]}"
            self.split[rep] = name
            self.prologue.append(f"{name} = {rep}.split(cs) if cs in {rep} else None")
        return name

    def first(self, source: SourceRef) -> str:
        """An expression for ``source.first(ctx)`` (what :func:`_leaf` returns, inline when it can)."""
        if not _direct(source):
            return f"{self.const(source)}.first(ctx)"
        assert isinstance(source, Hl7Ref)
        rep = self.repetition(source)
        comp, sub = source._comp, source._sub
        if sub is not None:
            return f"_leaf({rep}, seps, {comp!r}, {sub!r})"
        if comp is None or (comp == 1 and not self.multi_component(source)):
            # Plain text (no delimiter, escape or HL7 null) is the value itself.
            return (f"({rep} if cs not in {rep} and ss not in {rep} and es not in {rep} and {rep} != '\"\"'"
                    f" else _leaf({rep}, seps, {comp!r}, None))")
        parts = self.components(rep)
        if comp == 1:  # without a component separator: the repetition, as _leaf reads comp 1
            whole = f"_leaf({rep}, seps, 1, None)"
            return f"(_part({parts}[0], seps) if {parts} is not None else {whole})"
        # Past the last component: absent, or null when the whole repetition is ``""``.
        found = f"{parts} is not None and {comp} <= len({parts})"
        return f"(_part({parts}[{comp - 1}], seps) if {found} else _absent({rep}))"

    def multi_component(self, source: Hl7Ref) -> bool:
        """True when another path already reads a component of the same repetition (worth splitting once)."""
        key = (source._segment, source._index, source._field, source._rep)
        return self.repetitions.get(key) in self.split

    def conditions(self, conditions: tuple[CompiledCondition, ...]) -> str:
        """An expression true when every condition holds, each tested in order as ``holds`` does."""
        return " and ".join(self.condition(c) for c in conditions)

    def condition(self, cond: CompiledCondition) -> str:
        """``cond.holds(ctx)`` as an expression; inline for an HL7 path (read once, tests in place).

        ``holds`` tests the source's first value, which for an HL7 path is what
        :meth:`first` reads (``Hl7Ref.first`` is the fast path of ``read()[0]``). Other
        sources (a variable joins its values in ``first``) keep calling ``holds``.
        """
        if not isinstance(cond.source, Hl7Ref):
            return f"{self.const(cond)}.holds(ctx)"
        tests = []  # each with "@" where the value goes (consts are names, never "@")
        if cond.equals is not None:
            tests.append(f"@ == {self.const(cond.equals)}")
        if cond.in_ is not None:
            tests.append(f"@ in {self.const(cond.in_)}")
        if cond.not_in is not None:
            tests.append(f"@ not in {self.const(cond.not_in)}")
        if cond.matches is not None:
            tests.append(f"{self.const(cond.matches)}.fullmatch(@) is not None")
        if cond.present is not None:
            tests.append("@" if cond.present else "not @")
        read = f"({self.first(cond.source)})"
        if len(tests) == 1:  # the usual condition: one test of the value, read in place
            return f"({tests[0].replace('@', read)})"
        value = self.temp()  # several tests of one value: read it once (the first test always passes)
        return f"((({value} := {read}) or True) and {' and '.join(t.replace('@', value) for t in tests)})"

    # Rules: each writes statements that leave the rule's value (or SKIP) in ``out``.

    def rule(self, rule: CompiledRule, out: str, depth: int) -> None:
        if rule.plain:
            self.plain(rule, out, depth)
            return
        if rule.conditions:
            self.line(depth, f"if not ({self.conditions(rule.conditions)}):")
            self.line(depth + 1, f"{out} = SKIP")
            self.line(depth, "else:")
            depth += 1
        if rule.fields is not None:
            self.objects(rule, out, depth)
            return
        self.raw(rule, out, depth)
        for bound in rule.transforms:
            self.transform(bound, out, depth)
        if rule.lookup is not None:
            self.lookup(rule.lookup, rule.default, out, depth)
        if rule.default is not None:
            self.line(depth, f"if not _filled({out}):")
            self.line(depth + 1, f"{out} = {rule.default!r}")
        if rule.required:
            self.line(depth, f"if not _filled({out}):")
            self.line(depth + 1, "raise GiveUp")

    def transform(self, bound: BoundTransform, out: str, depth: int) -> None:
        """``bound.apply(out, seps)``; a text value under the standard delimiters calls the function itself."""
        call = f"{self.const(bound)}.apply({out}, seps)"
        if bound.transform.on_list:
            self.line(depth, f"{out} = {call}")
            return
        fn, args, tctx = self.const(bound.transform.fn), self.const(bound.args), self.const(bound.context)
        self.line(depth, f"{out} = {fn}({out}, {args}, {tctx}) if {out}.__class__ is str and seps is {tctx}.seps"
                         f" else {call}")

    def lookup(self, lookup: Lookup, default: str | None, out: str, depth: int) -> None:
        """``lookup.apply(out, ctx, default)``; a one-column lookup of a text value reads the index itself."""
        call = f"{self.const(lookup)}.apply({out}, ctx, {default!r})"
        if lookup.keys or lookup.on_missing == "error":
            self.line(depth, f"{out} = {call}")
            return
        missing = {"keep": out, "default": repr(default or ""), "empty": "''"}[lookup.on_missing]
        found = self.temp()
        self.line(depth, f"if {out}.__class__ is str:")
        self.line(depth + 1, f"if {out}:")
        self.line(depth + 2, f"{found} = {self.const(lookup.index)}.get(({out},))")
        self.line(depth + 2, f"{out} = {found} if {found} is not None else {missing}")
        self.line(depth, "else:")
        self.line(depth + 1, f"{out} = {call}")

    def plain(self, rule: CompiledRule, out: str, depth: int) -> None:
        """The first filled path; else the default, GiveUp, or NULL when a path was null ("" when none).

        Whether a path was null is only tracked once a path is empty (``null`` is first
        bound then), so a filled first path costs what it did before nulls were kept.
        """
        null = self.temp()
        for index, source in enumerate(rule.sources):
            if index > 1:  # the first path's value is already in ``null``
                self.line(depth, f"if {out} is NULL: {null} = NULL")
            self.line(depth, f"{out} = {self.first(source)}")
            self.line(depth, f"if not {out} or {out} == '\"\"':")
            depth += 1
            if not index:
                self.line(depth, f"{null} = {out}")
        if rule.default is not None:
            self.line(depth, f"{out} = {rule.default!r}")
        elif rule.required:
            self.line(depth, "raise GiveUp")
        elif rule.sources:
            self.line(depth, f"if {out} is NULL: {null} = NULL")
            self.line(depth, f"{out} = NULL if {null} is NULL else ''")
        else:
            self.line(depth, f"{out} = ''")

    def raw(self, rule: CompiledRule, out: str, depth: int) -> None:
        """The first filled alternative: const, ``first`` rules, then the paths (interpreter ``_raw``)."""
        if rule.const is not None:
            self.line(depth, f"{out} = {rule.const!r}")
            return
        null = self.temp()  # NULL once an alternative was null; the value when none is filled
        self.line(depth, f"{null} = ''")
        for sub in rule.first:
            self.rule(sub, out, depth)
            self.line(depth, f"if {out} is SKIP or not _filled({out}):")
            depth += 1
            self.line(depth, f"if {out} is NULL: {null} = NULL")
        for source in rule.sources:
            if source.multi:
                self.line(depth, f"{out} = _kept({self.const(source)}.read(ctx))")
                self.line(depth, f"if not {out}:")
            else:
                self.line(depth, f"{out} = {self.first(source)}")
                self.line(depth, f"if not {out} or {out} == '\"\"':")
            depth += 1
            self.line(depth, f"if {out} is NULL: {null} = NULL")
        self.line(depth, f"{out} = {null}")

    def objects(self, rule: CompiledRule, out: str, depth: int) -> None:
        """A nested object (``fields`` without ``each``) inline; ``each`` lists by the interpreter."""
        assert rule.fields is not None
        if rule.each is not None:
            self.line(depth, f"{out} = _objects({self.const(rule)}, ctx, [], '')")
            return
        obj, filled, value = self.temp(), self.temp(), self.temp()
        self.line(depth, f"{obj} = {{}}")
        self.line(depth, f"{filled} = False")
        for sub in rule.fields:
            self.rule(sub, value, depth)
            self.line(depth, f"if {value} is not SKIP:")
            self.line(depth + 1, f"{obj}[{sub.target!r}] = {value}")
            self.line(depth + 1, f"{filled} = {filled} or _filled({value})")
        if rule.required:
            self.line(depth, f"if not {filled}:")
            self.line(depth + 1, "raise GiveUp")
        self.line(depth, f"{out} = {obj} if {filled} else None")

    def record_fields(self, output: CompiledOutput) -> None:
        """A record output: its fields into a dict, as ``CompiledOutput._shape`` makes one."""
        self.line(1, f"record = {{'record': {output.name!r}}}")
        self.line(1, "cleared = []  # the fields sent as HL7 null (engine.mapping.compiled.record_of)")
        for rule in output.fields:
            value = self.temp()
            self.rule(rule, value, 1)
            if rule.plain:  # a text, never SKIP
                self.line(1, f"record[{rule.target!r}] = {value}")
                self.line(1, f"if {value} is NULL: record[{rule.target!r}] = ''; cleared.append({rule.target!r})")
                continue
            self.line(1, f"if {value} is not SKIP:")
            self.line(2, f"record[{rule.target!r}] = _flat({value}) if {value}.__class__ is list else {value}")
            self.line(2, f"if {value} is NULL: record[{rule.target!r}] = ''; cleared.append({rule.target!r})")
        self.line(1, f"if cleared: record[{CLEARED!r}] = cleared")
        self.line(1, "return record")

    def hl7_fields(self, output: CompiledOutput) -> None:
        """An hl7v2 output: the (rule, value) pairs ``CompiledOutput.build`` collects, rendered by the
        output's own ``_shape`` (escaping and segment layout stay in one place)."""
        self.line(1, "values = []")
        for rule in output.fields:
            value = self.temp()
            self.rule(rule, value, 1)
            pair = f"({self.const(rule)}, _flat({value}) if {value}.__class__ is list else {value})"
            if rule.plain:
                self.line(1, f"values.append({pair})")
                continue
            self.line(1, f"if {value} is not SKIP:")
            self.line(2, f"values.append({pair})")
        self.line(1, f"return {self.const(output._shape)}(values, ctx)")

    def output(self, output: CompiledOutput) -> str:
        if output.conditions:
            self.line(1, f"if not ({self.conditions(output.conditions)}):")
            self.line(2, "return None")
        if output.vars:
            self.line(1, "variables = ctx.vars")
        for var in output.vars:
            value = self.temp()
            self.rule(var, value, 1)
            self.line(1, f"variables[{var.target!r}] = None if {value} is SKIP else {value}")
        if output.kind == "record":
            self.record_fields(output)
        else:
            self.hl7_fields(output)
        head = ["def build(ctx):", "    scope = ctx.scope", "    seps = ctx.seps", "    rsep = seps.repetition",
                "    cs = seps.component", "    ss = seps.subcomponent", "    es = seps.escape"]
        return "\n".join([*head, *("    " + p for p in self.prologue), *self.lines]) + "\n"


def generate(output: CompiledOutput, label: str = "") -> FastBuild | None:
    """The generated function for a ``record`` or ``hl7v2`` output, or None to keep the interpreter."""
    if output.kind not in ("record", "hl7v2"):
        return None
    writer = _Writer()
    try:
        source = writer.output(output)
    except _Unsupported as exc:
        log.debug("mapping %s output %s stays interpreted: %s", label, output.name, exc)
        return None
    namespace = {**_HELPERS, **writer.names}
    try:
        exec(compile(source, f"<mapping {label}: {output.name}>", "exec"), namespace)
    except (SyntaxError, RecursionError, MemoryError) as exc:  # a generator bug must not stop loading
        log.warning("mapping %s output %s stays interpreted: %s", label, output.name, exc)
        return None
    build: FastBuild = namespace["build"]
    build.__doc__ = source  # what runs, for whoever debugs a mapping
    return build
