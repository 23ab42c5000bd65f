"""HL7 v2 source paths: parsing once, evaluating per message without hl7apy.

Syntax (the channel files' ``PID-3.4``/``OBR(2)-24`` notation, extended)::

    SEG[(occurrence)][-field[(repetition)][.component[.subcomponent]]]

* ``occurrence`` is 1-based, or ``*`` for every occurrence in scope;
* ``repetition`` is 1-based, ``*`` for every repetition, ``2-`` for the
  second and later ones, or a selector
  ``(4.1=ADT1)`` / ``(4.1!=ADT1)`` keeping the repetitions whose component
  4 sub-component 1 equals (or differs from) the value;
* a *relative* path ``item.4.1`` (or ``item``) reads a component of the
  current repetition inside an ``each`` rule.

Numbering follows HL7 v2.5.1 2.5 (MSH-1 is the field separator). Leaf values
are unescaped (HL7 v2.5.1 2.7); a value that still has components is kept as
written so that data-type transforms (XPN, XCN, TS) can split it. A leaf that
is exactly ``""`` is the explicit null (engine.mapping.null), never the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from engine.hl7.er7 import Segment, Separators, pick, unescape
from engine.mapping.null import HL7_NULL, NULL

__all__ = ["Hl7Path", "PathSyntaxError", "RepSelector", "parse_hl7_path", "read_repetition", "target_path"]

_PATH = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\((?P<occ>\d+|\*)\))?"
    r"(?:-(?P<field>\d+)(?:\((?P<rep>[^)]*)\))?"
    r"(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?)?$"
)
_RELATIVE = re.compile(r"^item(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?$")
_SELECTOR = re.compile(r"^(?P<comp>\d+)(?:\.(?P<sub>\d+))?(?P<op>!?=)(?P<value>.*)$")


class PathSyntaxError(ValueError):
    """A path that does not follow the syntax in the module docstring."""


@dataclass(frozen=True, slots=True)
class RepSelector:
    """Keep repetitions whose ``comp.sub`` equals (or, negated, differs from) ``value``."""

    comp: int
    sub: int
    value: str
    negate: bool = False

    def keeps(self, repetition: str, seps: Separators) -> bool:
        """True when ``repetition`` passes the selector."""
        found = unescape(pick(repetition, seps, self.comp, self.sub), seps) == self.value
        return found != self.negate


@dataclass(frozen=True, slots=True)
class Hl7Path:
    """One parsed path; ``segment`` is "" for a relative path."""

    text: str
    segment: str = ""
    occurrence: int | None = None  # None = first in scope; 0 = every occurrence
    field: int | None = None
    repetition: int | None = None  # None = first; 0 = every repetition
    rep_from: int = 1  # with repetition 0: the first repetition kept
    selector: RepSelector | None = None
    component: int | None = None
    subcomponent: int | None = None

    @property
    def relative(self) -> bool:
        """True for ``item.comp.sub`` paths read from the current repetition."""
        return not self.segment

    @property
    def multi(self) -> bool:
        """True when the path can yield several values."""
        return self.occurrence == 0 or self.repetition == 0 or self.selector is not None

    def read(self, segments: list[Segment]) -> list[str]:
        """Every value this path selects from ``segments`` (already scoped), in order."""
        if self.occurrence == 0:
            chosen = segments
        else:
            index = (self.occurrence or 1) - 1
            chosen = segments[index : index + 1]
        out: list[str] = []
        for seg in chosen:
            out.extend(self._from_segment(seg))
        return out

    def first(self, segments: list[Segment]) -> str:
        """The single value of a non-multi path (fast path of :meth:`read`); "" when absent."""
        index = (self.occurrence or 1) - 1
        field = self.field
        if index >= len(segments) or field is None or field <= 2:
            found = self.read(segments)
            return found[0] if found else ""
        seg = segments[index]
        fields = seg.fields
        value = fields[field] if field < len(fields) else ""
        if not value:
            return ""
        seps = seg.seps
        if seps.repetition in value:
            reps = value.split(seps.repetition)
            rep = (self.repetition or 1) - 1
            value = reps[rep] if rep < len(reps) else ""
        elif self.repetition and self.repetition > 1:
            return ""
        return read_repetition(value, seps, self.component, self.subcomponent)

    def _from_segment(self, seg: Segment) -> list[str]:
        if self.field is None:
            return [seg.seps.field.join(seg.fields)]
        reps = seg.repetitions(self.field)
        if self.selector is not None:
            reps = [r for r in reps if self.selector.keeps(r, seg.seps)]
        elif self.repetition == 0:
            reps = reps[self.rep_from - 1 :]
        else:
            index = (self.repetition or 1) - 1
            reps = reps[index : index + 1]
        return [read_repetition(r, seg.seps, self.component, self.subcomponent) for r in reps]


def read_repetition(rep: str, seps: Separators, comp: int | None, sub: int | None) -> str:
    """Component/sub-component of one repetition; unescaped when it is a leaf.

    ``""`` as the whole repetition, or as the whole component a sub-component is read
    from, is the explicit null (:data:`~engine.mapping.null.NULL`), and so is every
    part of it (HL7 v2.5.1 2.5.3: a null field has null components).
    """
    if rep == HL7_NULL:
        return NULL
    if sub is not None:
        if ((comp or 1) > 1 or seps.component in rep) and _component(rep, seps, comp or 1) == HL7_NULL:
            return NULL
        rep = pick(rep, seps, comp or 1, sub)
    elif comp is not None and (comp > 1 or seps.component in rep):
        rep = _component(rep, seps, comp)
    if seps.component in rep or (comp is not None and sub is None and seps.subcomponent in rep):
        return rep
    if rep == HL7_NULL:
        return NULL
    return unescape(rep, seps) if seps.escape in rep else rep


def _component(rep: str, seps: Separators, comp: int) -> str:
    parts = rep.split(seps.component)
    return parts[comp - 1] if comp <= len(parts) else ""


def parse_hl7_path(text: str) -> Hl7Path:
    """Parse ``text``; raise :class:`PathSyntaxError` with the reason."""
    text = text.strip()
    rel = _RELATIVE.match(text)
    if rel:
        return Hl7Path(text, component=_int(rel["comp"]), subcomponent=_int(rel["sub"]))
    m = _PATH.match(text)
    if not m:
        raise PathSyntaxError(
            f"{text!r} is not an HL7 path like PID-3.1, OBR(2)-4.2, PID-3(*) or PID-3(4.1=ADT1)"
        )
    occ = m["occ"]
    rep_text = m["rep"]
    repetition, selector, rep_from = _repetition(text, rep_text)
    field = _int(m["field"])
    if field == 0 or _int(m["comp"]) == 0 or _int(m["sub"]) == 0 or occ == "0":
        raise PathSyntaxError(f"{text!r}: numbers in a path are 1-based")
    return Hl7Path(
        text,
        segment=m["seg"],
        occurrence=0 if occ == "*" else _int(occ),
        field=field,
        repetition=repetition,
        rep_from=rep_from,
        selector=selector,
        component=_int(m["comp"]),
        subcomponent=_int(m["sub"]),
    )


def _repetition(text: str, rep: str | None) -> tuple[int | None, RepSelector | None, int]:
    if rep is None:
        return None, None, 1
    if rep == "*":
        return 0, None, 1
    if rep.isdigit() and int(rep) > 0:
        return int(rep), None, 1
    if rep.endswith("-") and rep[:-1].isdigit() and int(rep[:-1]) > 0:
        return 0, None, int(rep[:-1])
    sel = _SELECTOR.match(rep)
    if not sel:
        raise PathSyntaxError(
            f"{text!r}: repetition must be a number, *, 2- or a selector like (4.1=ADT1)"
        )
    return (
        None,
        RepSelector(int(sel["comp"]), int(sel["sub"] or 1), sel["value"], sel["op"] == "!="),
        1,
    )


@lru_cache(maxsize=1024)
def target_path(text: str) -> Hl7Path:
    """:func:`parse_hl7_path` of a target name already checked by the compiler (cached)."""
    return parse_hl7_path(text)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None else None
