"""Compiled source references: where a rule reads its value from.

Every reference reads a list of text values from a :class:`Context` (most
paths yield zero or one value; ``(*)`` and selectors yield several) and can
say where an HL7 error about it should point (ERR-2, HL7 v2.5.1 2.15.5.2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import ErrorLocation
from engine.hl7.er7 import Message, Segment, Separators, unescape
from engine.mapping.null import HL7_NULL, NULL
from engine.mapping.paths import Hl7Path, PathSyntaxError, read_repetition

__all__ = [
    "Context",
    "Hl7Ref",
    "ObjectRef",
    "SourceRef",
    "VarRef",
    "parse_object_path",
]


@dataclass(slots=True)
class Context:
    """The state of one output evaluation: message scope, variables, current item."""

    seps: Separators
    message: Message | None = None
    scope: Mapping[str, list[Segment]] = field(default_factory=dict)
    obj: Any = None
    vars: dict[str, Any] = field(default_factory=dict)
    current: str | None = None
    current_obj: Any = None
    output: int = -1
    provenance: bool = True  # False: the caller only wants the records (the channel's receive path)

    def for_item(self, scope: Mapping[str, list[Segment]], current: str | None, current_obj: Any) -> Context:
        """This context for one item of an ``each``: the same but for ``scope`` and the current item.

        Spelled out rather than ``dataclasses.replace``, which looks the fields up for every item
        (a new field must be copied here too).
        """
        return Context(seps=self.seps, message=self.message, scope=scope, obj=self.obj, vars=self.vars,
                       current=current, current_obj=current_obj, output=self.output, provenance=self.provenance)


class SourceRef(Protocol):
    """A readable source path."""

    @property
    def text(self) -> str: ...

    @property
    def multi(self) -> bool: ...

    def read(self, ctx: Context) -> list[str]: ...

    def first(self, ctx: Context) -> str: ...

    def items(self, ctx: Context) -> list[Any]: ...

    def location(self, ctx: Context) -> ErrorLocation | None: ...


class Hl7Ref:
    """An HL7 v2 path (absolute, or relative to the current repetition).

    A plain class with the path's numbers copied into slots: :meth:`first`
    runs for nearly every field of every message and is kept flat.
    """

    __slots__ = (
        "_comp",
        "_fast",
        "_field",
        "_index",
        "_rep",
        "_segment",
        "_sub",
        "multi",
        "path",
        "text",
    )

    def __init__(self, path: Hl7Path, text: str) -> None:
        self.path = path
        self.text = text
        self.multi = path.multi
        self._segment = path.segment
        self._index = (path.occurrence or 1) - 1
        self._field = path.field or 0
        self._rep = (path.repetition or 1) - 1
        self._comp = path.component
        self._sub = path.subcomponent
        self._fast = not (path.relative or path.multi or self._field <= 2)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hl7Ref) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def read(self, ctx: Context) -> list[str]:
        """Every value the path selects in ``ctx``."""
        path = self.path
        if path.relative:
            if ctx.current is None:
                return []
            return [read_repetition(ctx.current, ctx.seps, path.component, path.subcomponent)]
        return path.read(ctx.scope.get(path.segment, []))

    def first(self, ctx: Context) -> str:
        """The first value ("" when none, NULL for ``""``); the per-message fast path."""
        if not self._fast:
            values = self.read(ctx)
            return values[0] if values else ""
        segments = ctx.scope.get(self._segment)
        if not segments or self._index >= len(segments):
            return ""
        seg = segments[self._index]
        fields = seg.fields
        if self._field >= len(fields):
            return ""
        value = fields[self._field]
        if not value:
            return ""
        seps = seg.seps
        if seps.repetition in value:
            reps = value.split(seps.repetition)
            value = reps[self._rep] if self._rep < len(reps) else ""
        elif self._rep:
            return ""
        if self._sub is None and seps.component not in value and seps.subcomponent not in value:
            if value == HL7_NULL:
                return NULL
            if (self._comp or 1) > 1:
                return ""
            return unescape(value, seps) if seps.escape in value else value
        return read_repetition(value, seps, self._comp, self._sub)

    def items(self, ctx: Context) -> list[Any]:
        """The values an ``each`` iterates over: a segment path (``OBX(*)``) gives the segments.

        Inside an ``each`` over segments, paths of that segment read the current one
        (``OBX-5`` is the current OBX's field 5), so one item can take several fields.
        """
        path = self.path
        if path.field is None and not path.relative:
            segments = ctx.scope.get(path.segment, [])
            if path.occurrence == 0:
                return list(segments)
            index = (path.occurrence or 1) - 1
            return segments[index : index + 1]
        return self.read(ctx)

    def location(self, ctx: Context) -> ErrorLocation | None:
        """ERR-2 for this path, with the segment's sequence in the whole message."""
        path = self.path
        if path.relative:
            return None
        in_scope = ctx.scope.get(path.segment, [])
        index = max((path.occurrence or 1) - 1, 0)
        sequence = 1
        if ctx.message is not None and index < len(in_scope):
            everywhere = ctx.message.all(path.segment)
            sequence = next(i for i, s in enumerate(everywhere, 1) if s is in_scope[index])
        return ErrorLocation(path.segment, sequence, path.field, path.component)


@dataclass(frozen=True, slots=True)
class VarRef:
    """``$name``: a variable computed earlier in the same output."""

    name: str
    text: str

    @property
    def multi(self) -> bool:
        return False

    def items(self, ctx: Context) -> list[Any]:
        return self.read(ctx)

    def first(self, ctx: Context) -> str:
        """A variable holding several values reads as one, joined with ``\\``; a null stays null."""
        values = self.read(ctx)
        return values[0] if len(values) == 1 else "\\".join(values)

    def read(self, ctx: Context) -> list[str]:
        value = ctx.vars.get(self.name)
        if value is None:
            return []
        if value is NULL:
            return [NULL]
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    def location(self, ctx: Context) -> ErrorLocation | None:
        return None


_STEP = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>\d+|\*)\])?$")


def parse_object_path(text: str) -> tuple[tuple[str, int | None], ...]:
    """``a.b[0].c`` → (("a", None), ("b", 0), ("c", None)); ``[*]`` is index -1."""
    steps: list[tuple[str, int | None]] = []
    for part in text.strip().split("."):
        m = _STEP.match(part)
        if not m:
            raise PathSyntaxError(f"{text!r}: {part!r} is not a name or name[index]")
        index = m["index"]
        steps.append((m["name"], None if index is None else (-1 if index == "*" else int(index))))
    return tuple(steps)


def _child(node: Any, name: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(name)
    return getattr(node, name, None)


def _walk(node: Any, steps: tuple[tuple[str, int | None], ...]) -> list[Any]:
    nodes = [node]
    for name, index in steps:
        found: list[Any] = []
        for item in nodes:
            child = _child(item, name)
            if child is None:
                continue
            if index is None:
                found.append(child)
            elif index == -1:
                found.extend(child)
            elif index < len(child):
                found.append(child[index])
        nodes = found
    return nodes


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """A dotted path into a record dict or a DICOM dataset (keywords, ``Seq[0].Keyword``).

    A path starting with ``.`` is read from the current item of an ``each``.
    """

    steps: tuple[tuple[str, int | None], ...]
    text: str
    relative: bool = False

    @property
    def multi(self) -> bool:
        return any(index == -1 for _, index in self.steps)

    def read(self, ctx: Context) -> list[str]:
        root = ctx.current_obj if self.relative else ctx.obj
        return [text for text in map(_text, _walk(root, self.steps)) if text or text is NULL]

    def first(self, ctx: Context) -> str:
        node = ctx.current_obj if self.relative else ctx.obj
        for name, index in self.steps:  # the usual path, dicts by name only, without building lists
            if index is not None or node.__class__ is not dict:
                values = self.read(ctx)
                return values[0] if values else ""
            node = node.get(name)
            if node is None:
                return ""
        return _text(node)

    def items(self, ctx: Context) -> list[Any]:
        """The objects an ``each`` iterates over."""
        root = ctx.current_obj if self.relative else ctx.obj
        return _walk(root, self.steps)

    def location(self, ctx: Context) -> ErrorLocation | None:
        return None


def _text(value: Any) -> str:
    """A value of a record or dataset as text; a NULL in a record input stays NULL (engine.mapping.null)."""
    if value.__class__ is str:  # the usual value, without the ABC check below
        return str(value)
    if value is None or value is NULL:
        return "" if value is None else NULL
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return "\\".join(_text(v) for v in value)
    return str(value)
