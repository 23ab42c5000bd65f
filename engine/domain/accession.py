"""Accession numbers: taken from the order or generated from a database sequence.

The sequence is a row per name in ``accession_sequences``, advanced with
``UPDATE … RETURNING`` inside the caller's transaction: the row lock
(PostgreSQL) or the write lock (SQLite ``BEGIN IMMEDIATE``) makes values unique
across restarts and across several engine processes sharing one database.
AccessionNumber is SH, at most 16 characters (PS3.5 6.2).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Literal

from sqlalchemy import Connection, bindparam, insert, update
from sqlalchemy.exc import IntegrityError

from engine.domain.tables import accession_sequences
from engine.errors import ErrorLocation, HL7ApplicationError
from engine.store.fast import FastStatement, first_row

__all__ = ["AccessionPolicy", "format_accession", "next_sequence_value", "resolve_accession"]

AccessionPolicy = Literal["always_generate", "generate_if_missing", "require"]
MAX_LENGTH = 16
_LOCATION = ErrorLocation("OBR", 1, 18)


def format_accession(pattern: str, seq: int, today: date) -> str:
    """Render ``pattern`` (``str.format`` with ``date`` and ``seq``); reject over-long results."""
    value = pattern.format(date=today, seq=seq)
    if not value or len(value) > MAX_LENGTH:
        raise ValueError(f"accession pattern {pattern!r} gave {value!r} (1-16 characters)")
    return value


# Runs for every order without an accession number: compiled once, run on the raw cursor.
_ADVANCE = FastStatement(
    update(accession_sequences)
    .where(accession_sequences.c.name == bindparam("name"))
    .values(next_value=accession_sequences.c.next_value + 1)
    .returning(accession_sequences.c.next_value)
)


def next_sequence_value(conn: Connection, name: str) -> int:
    """Advance sequence ``name`` in the caller's transaction and return its value (from 1)."""
    row = first_row(_ADVANCE, conn, {"name": name})
    if row is not None:
        return int(row[0]) - 1
    try:
        with conn.begin_nested():
            conn.execute(insert(accession_sequences).values(name=name, next_value=2))
    except IntegrityError:  # another process created it first
        return next_sequence_value(conn, name)
    return 1


_NEEDS_GENERATION: dict[tuple[AccessionPolicy, bool], bool] = {
    ("always_generate", True): True,
    ("always_generate", False): True,
    ("generate_if_missing", True): False,
    ("generate_if_missing", False): True,
    ("require", True): False,
}


def resolve_accession(policy: AccessionPolicy, given: str, generate: Callable[[], str]) -> str:
    """The accession number under ``policy``; ``generate`` is called only if needed."""
    key = (policy, bool(given))
    if key not in _NEEDS_GENERATION:
        raise HL7ApplicationError(101, "accession number required (OBR-18 / IPC-1)", _LOCATION)
    return generate() if _NEEDS_GENERATION[key] else given
