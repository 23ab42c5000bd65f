"""Running a search plan in SQL over the index tables, and reading stored resources.

Each condition becomes ``fhir_resources.id IN (SELECT resource_pk FROM <index> …)``;
results come in ``fhir_resources.id`` order, one page after the cursor (keyset
paging: a page boundary never skips or repeats a resource that exists throughout).
Nothing here parses stored JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, func, not_, or_, select, tuple_

from engine.fhir.query import Condition, DateValue, Plan, TokenValue
from engine.fhir.resources.common import normalise
from engine.fhir.tables import fhir_dates, fhir_refs, fhir_resources, fhir_strings, fhir_tokens, fhir_versions

__all__ = ["Page", "Stored", "history", "read", "run", "vread"]

r = fhir_resources.c


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored resource version as served."""

    pk: int
    res_type: str
    res_id: str
    version_id: int
    last_updated: str
    json: str


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a search: matches (in order), included resources, total, the next cursor."""

    matches: list[Stored]
    included: list[Stored]
    total: int
    next_cursor: int | None


#: R4 3.1.1.5.4 prefixes over half-open ranges: (resource low, high, value low, high) -> condition.
_DATE: dict[str, Callable[[Any, Any, str, str], ColumnElement[bool]]] = {
    "eq": lambda lo, hi, vlo, vhi: and_(lo >= vlo, hi <= vhi),
    "ne": lambda lo, hi, vlo, vhi: not_(and_(lo >= vlo, hi <= vhi)),
    "gt": lambda lo, hi, vlo, vhi: hi > vhi,
    "lt": lambda lo, hi, vlo, vhi: lo < vlo,
    "ge": lambda lo, hi, vlo, vhi: hi > vlo,
    "le": lambda lo, hi, vlo, vhi: lo < vhi,
    "sa": lambda lo, hi, vlo, vhi: lo >= vhi,
    "eb": lambda lo, hi, vlo, vhi: hi <= vlo,
}


def _date_condition(low: Any, high: Any, value: DateValue) -> ColumnElement[bool]:
    return _DATE[value.prefix](low, high, *value.range)


def _token_condition(value: TokenValue) -> ColumnElement[bool]:
    t = fhir_tokens.c
    parts = []
    if value.system is not None:
        parts.append(t.system == value.system)
    if value.code is not None:
        parts.append(t.code == value.code)
    return and_(*parts)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string_condition(modifier: str, text: str) -> ColumnElement[bool]:
    value, column = normalise(text), fhir_strings.c.value
    if modifier == "exact":
        return column == value
    pattern = f"%{_like(value)}%" if modifier == "contains" else f"{_like(value)}%"
    return column.like(pattern, escape="\\")


_INDEXES = {"token": fhir_tokens, "reference": fhir_refs, "date": fhir_dates, "string": fhir_strings}
#: Which indexed condition drives a search: the likely most selective first.
_DRIVER_RANK = {"identifier": 0, "_id": 0, "patient": 1, "subject": 1, "basedon": 1, "series": 1, "instance": 1}


def _matches(cond: Condition) -> ColumnElement[bool]:
    """The index-table rows of ``cond``'s values (any of them)."""
    if cond.param.type == "token":
        return or_(*(_token_condition(v) for v in cond.values if isinstance(v, TokenValue)))
    if cond.param.type == "reference":
        return fhir_refs.c.target.in_([str(v) for v in cond.values])
    if cond.param.type == "date":
        d = fhir_dates.c
        return or_(*(_date_condition(d.low, d.high, v) for v in cond.values if isinstance(v, DateValue)))
    return or_(*(_string_condition(cond.modifier, str(v)) for v in cond.values))


def _indexed(res_type: str, cond: Condition) -> Any:
    """``SELECT resource_pk FROM <index> WHERE param = … AND (values)``: the resources ``cond`` matches."""
    table = _INDEXES[cond.param.type]
    return select(table.c.resource_pk).where(table.c.param == f"{res_type}.{cond.param.name}", _matches(cond))


def _on_resources(cond: Condition) -> ColumnElement[bool]:
    """A condition on ``fhir_resources`` itself (``_id``, ``_lastUpdated``)."""
    if cond.param.name == "_id":
        return r.res_id.in_([v.code for v in cond.values if isinstance(v, TokenValue) and v.code])
    return or_(*(_date_condition(r.last_updated, r.last_updated, v) for v in cond.values
                 if isinstance(v, DateValue)))


def _ids(plan: Plan) -> tuple[Any, Any]:
    """(the matching resource pks as a selectable column, the query's filters), driven by an index when one applies.

    With an indexed condition the resources table is not scanned at all: the first index
    subquery yields candidates in key order and every other condition filters them.
    """
    direct = [c for c in plan.conditions if c.param.name in ("_id", "_lastUpdated")]
    indexed = sorted((c for c in plan.conditions if c not in direct),
                     key=lambda c: (_DRIVER_RANK.get(c.param.name, 2), c.param.type != "token"))
    if not indexed:
        return r.id, [r.res_type == plan.res_type, *(_on_resources(c) for c in direct)]
    driver = _indexed(plan.res_type, indexed[0]).subquery()
    key = driver.c.resource_pk
    filters = [key.in_(_indexed(plan.res_type, c)) for c in indexed[1:]]
    if direct:
        filters.append(key.in_(select(r.id).where(r.res_type == plan.res_type, *(_on_resources(c) for c in direct))))
    return key, filters


def _stored(row: Any) -> Stored:
    return Stored(int(row.id), row.res_type, row.res_id, int(row.version_id), row.last_updated, row.json)


_COLUMNS = (r.id, r.res_type, r.res_id, r.version_id, r.last_updated, r.json)


def _included(conn: Connection, plan: Plan, matches: list[Stored]) -> list[Stored]:
    if not matches or not (plan.includes or plan.revincludes):
        return []
    pks = [m.pk for m in matches]
    f = fhir_refs.c
    found: dict[int, Stored] = {}
    for source, param, target in plan.includes:
        targets = select(f.target).where(f.param == f"{source}.{param}", f.resource_pk.in_(pks),
                                         f.target.like(f"{target}/%"))
        names = [str(t).split("/", 1) for (t,) in conn.execute(targets)]
        if names:
            rows = conn.execute(select(*_COLUMNS).where(tuple_(r.res_type, r.res_id).in_([tuple(n) for n in names])))
            found.update((int(row.id), _stored(row)) for row in rows)
    for source, param in plan.revincludes:
        refs = [f"{m.res_type}/{m.res_id}" for m in matches]
        sources = select(f.resource_pk).where(f.param == f"{source}.{param}", f.target.in_(refs))
        rows = conn.execute(select(*_COLUMNS).where(r.res_type == source, r.id.in_(sources)).order_by(r.id))
        found.update((int(row.id), _stored(row)) for row in rows)
    seen = set(pks)
    return [s for pk, s in sorted(found.items()) if pk not in seen]


def run(conn: Connection, plan: Plan) -> Page:
    """The page of ``plan`` after its cursor, with the total number of matches."""
    key, filters = _ids(plan)
    total = int(conn.execute(select(func.count(func.distinct(key))).where(*filters)).scalar_one())
    if plan.summary_count or plan.count == 0:
        return Page([], [], total, None)
    pks = conn.execute(select(key).distinct().where(*filters, key > plan.cursor).order_by(key)
                       .limit(plan.count + 1)).scalars().all()
    rows = conn.execute(select(*_COLUMNS).where(r.id.in_(pks[:plan.count])).order_by(r.id)).all()
    matches = [_stored(row) for row in rows]
    next_cursor = int(pks[plan.count - 1]) if len(pks) > plan.count else None
    return Page(matches, _included(conn, plan, matches), total, next_cursor)


def read(conn: Connection, res_type: str, res_id: str) -> Stored | None:
    """The current version of a resource, or None."""
    row = conn.execute(select(*_COLUMNS).where(r.res_type == res_type, r.res_id == res_id)).first()
    return _stored(row) if row is not None else None


def vread(conn: Connection, res_type: str, res_id: str, version: int) -> Stored | None:
    """One version of a resource, or None."""
    v = fhir_versions.c
    row = conn.execute(select(r.id, r.res_type, r.res_id, v.version_id, v.last_updated, v.json)
                       .join(fhir_versions, v.resource_pk == r.id)
                       .where(r.res_type == res_type, r.res_id == res_id, v.version_id == version)).first()
    return _stored(row) if row is not None else None


def history(conn: Connection, res_type: str, res_id: str, limit: int) -> list[Stored] | None:
    """The versions of a resource, newest first (at most ``limit``); None if the resource does not exist."""
    current = read(conn, res_type, res_id)
    if current is None:
        return None
    v = fhir_versions.c
    rows = conn.execute(select(r.id, r.res_type, r.res_id, v.version_id, v.last_updated, v.json)
                        .join(fhir_versions, v.resource_pk == r.id).where(r.id == current.pk)
                        .order_by(v.version_id.desc()).limit(limit))
    return [_stored(row) for row in rows]


