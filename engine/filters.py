"""Channel filters: pure predicates over a tokenized message.

A field path names a segment (with optional occurrence), a field (with
optional repetition), a component and a sub-component: ``PID-3.4``,
``OBR(2)-24``, ``PID-3(2).1``. Values are compared unescaped.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import lru_cache

from engine.config.models import FieldCondition, FilterConfig
from engine.hl7.er7 import Message, unescape

__all__ = ["FieldPath", "accepts", "field_value", "parse_path"]

_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})(?:\((\d+)\))?-(\d+)(?:\((\d+)\))?(?:\.(\d+))?(?:\.(\d+))?$")


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A parsed field path; all indices 1-based."""

    segment: str
    occurrence: int
    field: int
    repetition: int
    component: int
    subcomponent: int


@lru_cache(maxsize=1024)
def parse_path(path: str) -> FieldPath:
    """Parse ``PID-3.4``-style paths; raise ValueError on bad syntax."""
    match = _PATH.match(path)
    if not match:
        raise ValueError(f"{path!r} is not a field path like PID-3.4 or OBR(2)-24")
    seg, occ, fld, rep, comp, sub = match.groups()
    return FieldPath(seg, int(occ or 1), int(fld), int(rep or 1), int(comp or 1), int(sub or 1))


def field_value(message: Message, path: str) -> str:
    """The unescaped value at ``path`` ("" when absent)."""
    p = parse_path(path)
    seg = message.segment(p.segment, p.occurrence)
    if seg is None:
        return ""
    return unescape(seg.value(p.field, p.repetition, p.component, p.subcomponent), message.seps)


def _condition(message: Message, cond: FieldCondition) -> bool:
    value = field_value(message, cond.field)
    if cond.present is not None:
        result = bool(value) == cond.present
    elif cond.equals is not None:
        result = value == cond.equals
    elif cond.in_ is not None:
        result = value in cond.in_
    else:
        result = re.search(cond.matches or "", value) is not None
    return result != cond.negate


def _listed(value: str, patterns: list[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(value, p) for p in patterns)


def accepts(message: Message, config: FilterConfig) -> bool:
    """True when ``message`` passes the channel filter."""
    if not _listed(message.message_type, config.message_types):
        return False
    if not _listed(message.sending_application, config.sending_applications):
        return False
    if not _listed(message.sending_facility, config.sending_facilities):
        return False
    if not config.conditions:
        return True
    results = (_condition(message, c) for c in config.conditions)
    return all(results) if config.mode == "all" else any(results)
