"""HL7 structure knowledge from hl7apy's reference data, cached per version.

hl7apy is too slow to parse every message (../shared/reference/PERFORMANCE.md)
but its tables are the right source for what a segment's fields are, which
data type each has, and which segments a message structure allows. These
lookups are computed once per (version, name) and then cost a dict access.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from types import ModuleType
from typing import Any

__all__ = [
    "FieldDef",
    "defined_segments",
    "field_def",
    "known_segments",
    "reference_version",
    "segment_fields",
    "structure_segments",
]

_VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2")


class FieldDef(tuple[str, str, int, int]):
    """(data type, long name, minimum occurrences, maximum occurrences; -1 = unbounded)."""

    __slots__ = ()

    @property
    def datatype(self) -> str:
        return self[0]

    @property
    def long_name(self) -> str:
        return self[1]

    @property
    def required(self) -> bool:
        return self[2] > 0


def reference_version(version: str) -> str | None:
    """The hl7apy reference version for MSH-12 (``2.5.0`` → ``2.5``; unknown → None)."""
    v = version.strip()
    while v.endswith(".0") and v.count(".") > 1:
        v = v[:-2]
    if v in _VERSIONS:
        return v
    major_minor = ".".join(v.split(".")[:2])
    return major_minor if major_minor in _VERSIONS else None


@lru_cache(maxsize=32)
def _module(version: str, part: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"hl7apy.v{version.replace('.', '_')}.{part}")
    except ImportError:
        return None


@lru_cache(maxsize=2048)
def segment_fields(version: str, segment: str) -> dict[int, FieldDef]:
    """Field number → definition for ``segment`` in ``version`` ({} if unknown)."""
    mod = _module(version, "segments")
    definition = getattr(mod, "SEGMENTS", {}).get(segment) if mod else None
    if not definition:
        return {}
    out: dict[int, FieldDef] = {}
    for child in definition[1]:
        name, spec, cardinality = child[0], child[1], child[2]
        number = int(name.rsplit("_", 1)[1])
        out[number] = FieldDef((str(spec[2]), str(spec[3]), int(cardinality[0]), int(cardinality[1])))
    return out


def field_def(version: str, segment: str, number: int) -> FieldDef | None:
    """The definition of SEG-number, or None."""
    return segment_fields(version, segment).get(number)


@lru_cache(maxsize=32)
def known_segments(version: str) -> frozenset[str]:
    """Every segment id the version defines."""
    mod = _module(version, "segments")
    return frozenset(getattr(mod, "SEGMENTS", {})) if mod else frozenset()


@lru_cache(maxsize=1)
def defined_segments() -> frozenset[str]:
    """Every segment id any supported HL7 v2 version defines (loaded on first use)."""
    return frozenset().union(*(known_segments(v) for v in _VERSIONS))


def _collect(node: Any, into: set[str]) -> None:
    for child in node[1]:
        name = child[0]
        if len(name) == 3 and name.isalnum() and name.isupper():
            into.add(name)
        else:
            _collect(child[1], into)


@lru_cache(maxsize=1024)
def structure_segments(version: str, structure: str) -> frozenset[str] | None:
    """Segment ids allowed anywhere in message structure ``structure`` (None if unknown)."""
    mod = _module(version, "messages")
    definition = getattr(mod, "MESSAGES", {}).get(structure) if mod else None
    if not definition:
        return None
    found: set[str] = set()
    _collect(definition, found)
    return frozenset(found)
