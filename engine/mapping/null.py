"""The HL7 v2 explicit null: a field sent as ``""`` (HL7 v2.5.1 2.5.3, 2.6).

An empty field means "no change"; a field holding exactly two double quotes
means "delete the value the receiver holds". The mapping layer reads the
latter as :data:`NULL`, a ``str`` equal to ``""`` (so every test for an empty
value still holds), and keeps it distinct through a rule: transforms and
code tables pass it through untouched, a ``default`` replaces it like an empty
value, ``required`` refuses it. A record output lists the fields that came out
null under ``cleared`` (docs/mapping.md "Explicit null").
"""

from __future__ import annotations

from typing import Any

__all__ = ["CLEARED", "HL7_NULL", "NULL", "Null", "is_null", "null_or_empty"]

#: The key under which a record output lists its null fields (engine.domain.records ``cleared``).
CLEARED = "cleared"
#: The wire form of the explicit null: the whole content of a field, repetition or component.
HL7_NULL = '""'


class Null(str):
    """The one explicit-null value (:data:`NULL`); compare with ``is``."""

    __slots__ = ()
    _instance: Null | None = None

    def __new__(cls) -> Null:
        if cls._instance is None:
            cls._instance = super().__new__(cls, "")
        return cls._instance

    def __repr__(self) -> str:
        return "NULL"

    def __reduce__(self) -> tuple[type[Null], tuple[()]]:
        return Null, ()


NULL = Null()


def is_null(value: Any) -> bool:
    """True for the explicit null."""
    return value is NULL


def null_or_empty(text: str) -> str:
    """:data:`NULL` for the wire form ``""``, else "" (a part a path reads that is absent or null)."""
    return NULL if text == HL7_NULL else ""

