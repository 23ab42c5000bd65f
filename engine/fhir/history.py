"""Type- and system-level ``_history`` (R4 3.1.0.7.3): every stored version, newest first, in pages.

A page is the ``count`` versions before its cursor in (``last_updated``, resource key,
version) order, descending: the index on ``fhir_versions`` yields them in that order, so a
page costs its own rows, whatever its position. The cursor is the position of the last
version served; versions stored after the first page never shift a later one (they sort
before it), so ``next`` links are stable. ``_since`` keeps versions stored at or after an
instant. What is in ``fhir_versions`` is what is served: every version of a
DiagnosticReport, and for the other types what ``http.fhir.history`` keeps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection, and_, func, or_, select, tuple_

from engine.fhir.query import MAX_PAGE_CHARS
from engine.fhir.search import Stored
from engine.fhir.tables import INSTANT_LENGTH, fhir_resources, fhir_versions

__all__ = ["Cursor", "HistoryPage", "bad_cursor", "history_page", "parse_cursor"]

_CURSOR = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z)~(\d{1,18})~(\d{1,9})$")


@dataclass(frozen=True, slots=True)
class Cursor:
    """The position of a version in history order: (last_updated, resource key, version)."""

    last_updated: str
    resource_pk: int
    version_id: int

    def __str__(self) -> str:
        return f"{self.last_updated}~{self.resource_pk}~{self.version_id}"


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Versions newest first, and the cursor of the next page (None on the last)."""

    versions: list[Stored]
    next_cursor: Cursor | None


def bad_cursor(text: str) -> bool:
    """True if ``text`` is not a cursor this server wrote."""
    return _CURSOR.match(text) is None


def parse_cursor(text: str) -> Cursor:
    """The cursor ``text`` names (check :func:`bad_cursor` first)."""
    match = _CURSOR.match(text)
    assert match is not None and len(match[1]) == INSTANT_LENGTH
    return Cursor(match[1], int(match[2]), int(match[3]))


def history_page(conn: Connection, res_type: str | None, count: int, since: str | None = None,
                 after: Cursor | None = None, max_chars: int = MAX_PAGE_CHARS) -> HistoryPage:
    """Up to ``count`` versions of ``res_type`` (every type: None), stored at or after ``since``, before ``after``,
    and, past the first, at most ``max_chars`` characters of their JSON (as a search page: the ``next`` cursor goes
    on from the last version served, so paging still gives every version)."""
    v, r = fhir_versions.c, fhir_resources.c
    statement = (select(r.id, r.res_type, r.res_id, v.version_id, v.last_updated, func.length(v.json).label("size"))
                 .join(fhir_resources, r.id == v.resource_pk)
                 .order_by(v.last_updated.desc(), v.resource_pk.desc(), v.version_id.desc()).limit(count + 1))
    if res_type is not None:
        statement = statement.where(r.res_type == res_type)
    if since is not None:
        statement = statement.where(v.last_updated >= since)
    if after is not None:
        statement = statement.where(tuple_(v.last_updated, v.resource_pk, v.version_id)
                                    < tuple_(after.last_updated, after.resource_pk, after.version_id))
    keys = statement.subquery()
    newest_first = (keys.c.last_updated.desc(), keys.c.id.desc(), keys.c.version_id.desc())
    sized = select(keys, func.sum(keys.c.size).over(order_by=newest_first).label("upto"),
                   func.count().over().label("n_rows")).subquery()
    s = sized.c
    rows = conn.execute(select(s.id, s.res_type, s.res_id, s.version_id, s.last_updated, v.json, s.n_rows)
                        .join(fhir_versions, and_(v.resource_pk == s.id, v.version_id == s.version_id))
                        .where(or_(s.upto <= max_chars, s.upto == s.size))
                        .order_by(s.last_updated.desc(), s.id.desc(), s.version_id.desc())).all()
    versions = [Stored(int(row[0]), row[1], row[2], int(row[3]), row[4], row[5]) for row in rows[:count]]
    last = versions[-1] if versions else None
    more = bool(rows) and (len(rows) > count or len(rows) < int(rows[0][6]))
    following = Cursor(last.last_updated, last.pk, last.version_id) if last and more else None
    return HistoryPage(versions, following)
