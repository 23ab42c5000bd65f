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

from sqlalchemy import ColumnElement, Connection, and_, bindparam, exists, func, not_, or_, select, tuple_

from engine.fhir.query import MAX_INCLUDED, MAX_PAGE_CHARS, Condition, DateValue, Plan, SearchError, TokenValue
from engine.fhir.resources.common import normalise
from engine.fhir.tables import fhir_dates, fhir_refs, fhir_resources, fhir_strings, fhir_tokens, fhir_versions
from engine.store.fast import FastStatement

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


#: The same prefixes for a resource's instant ``p`` (``_lastUpdated``), which is the range [p, p + 1 us).
_POINT: dict[str, Callable[[Any, str, str], ColumnElement[bool]]] = {
    "eq": lambda p, vlo, vhi: and_(p >= vlo, p < vhi),
    "ne": lambda p, vlo, vhi: not_(and_(p >= vlo, p < vhi)),
    "gt": lambda p, vlo, vhi: p >= vhi,
    "lt": lambda p, vlo, vhi: p < vlo,
    "ge": lambda p, vlo, vhi: p >= vlo,
    "le": lambda p, vlo, vhi: p < vhi,
    "sa": lambda p, vlo, vhi: p >= vhi,
    "eb": lambda p, vlo, vhi: p < vlo,
}


def _date_condition(low: Any, high: Any, value: DateValue) -> ColumnElement[bool]:
    return _DATE[value.prefix](low, high, *value.range)


def _token_condition(value: TokenValue, t: Any) -> ColumnElement[bool]:
    parts = []
    if value.system is not None:
        parts.append(t.system == value.system)
    if value.code is not None:
        parts.append(t.code == value.code)
    return and_(*parts)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string_condition(modifier: str, text: str, column: ColumnElement[str]) -> ColumnElement[bool]:
    value = normalise(text)
    if modifier == "exact":
        return column == value
    pattern = f"%{_like(value)}%" if modifier == "contains" else f"{_like(value)}%"
    return column.like(pattern, escape="\\")


_INDEXES = {"token": fhir_tokens, "reference": fhir_refs, "date": fhir_dates, "string": fhir_strings}
#: Which indexed condition drives a search: the likely most selective first.
_DRIVER_RANK = {"identifier": 0, "_id": 0, "patient": 1, "subject": 1, "basedon": 1, "series": 1, "instance": 1}


def _matches(cond: Condition, t: Any) -> ColumnElement[bool]:
    """The rows of index table ``t`` (columns) holding one of ``cond``'s values."""
    if cond.param.type == "token":
        return or_(*(_token_condition(v, t) for v in cond.values if isinstance(v, TokenValue)))
    if cond.param.type == "reference":
        target: ColumnElement[str] = t.target
        return target.in_([str(v) for v in cond.values])
    if cond.param.type == "date":
        return or_(*(_date_condition(t.low, t.high, v) for v in cond.values if isinstance(v, DateValue)))
    return or_(*(_string_condition(cond.modifier, str(v), t.value) for v in cond.values))


#: Aliases of the index tables for the conditions after the driver, made once: the same alias objects
#: every request keep SQLAlchemy's statement cache warm (a fresh alias is a new cache key and new columns).
_ALIASES = {kind: tuple(table.alias(f"{table.name}_{n}") for n in range(1, 9)) for kind, table in _INDEXES.items()}
_RESOURCES = fhir_resources.alias("fhir_resources_1")


def _alias(kind: str, n: int) -> Any:
    """The ``n``-th alias of the index table of ``kind`` (made on the spot beyond the prepared ones)."""
    prepared = _ALIASES[kind]
    return prepared[n] if n < len(prepared) else _INDEXES[kind].alias()


def _holds(res_type: str, cond: Condition, key: Any, n: int) -> ColumnElement[bool]:
    """``EXISTS`` an index row of resource ``key`` matching ``cond`` (the ``n``-th such check): one index seek
    per candidate (``param``, value, ``resource_pk`` lead the index), never a scan of every match of ``cond``."""
    table = _alias(cond.param.type, n)
    return exists().where(table.c.resource_pk == key, table.c.param == f"{res_type}.{cond.param.name}",
                          _matches(cond, table.c))


def _on_resources(cond: Condition, res: Any) -> ColumnElement[bool]:
    """A condition on ``fhir_resources`` itself (``_id``, ``_lastUpdated``)."""
    if cond.param.name == "_id":
        res_id: ColumnElement[str] = res.res_id
        return res_id.in_([v.code for v in cond.values if isinstance(v, TokenValue) and v.code])
    return or_(*(_POINT[v.prefix](res.last_updated, *v.range) for v in cond.values if isinstance(v, DateValue)))


def _ids(plan: Plan) -> tuple[Any, Any]:
    """(the matching resource pks as a selectable column, the query's filters), driven by an index when one applies.

    With an indexed condition the resources table is not scanned at all: the driving index
    table itself (no subquery around it, so SQLite walks the index directly) yields candidates
    in key order and every other condition checks each candidate (a correlated ``EXISTS``,
    one index seek).
    """
    direct = [c for c in plan.conditions if c.param.name in ("_id", "_lastUpdated")]
    indexed = sorted((c for c in plan.conditions if c not in direct),
                     key=lambda c: (_DRIVER_RANK.get(c.param.name, 2), c.param.type != "token"))
    if not indexed:
        return r.id, [r.res_type == plan.res_type, *(_on_resources(c, r) for c in direct)]
    first = indexed[0]
    driver = _INDEXES[first.param.type]
    key = driver.c.resource_pk
    filters = [driver.c.param == f"{plan.res_type}.{first.param.name}", _matches(first, driver.c),
               *(_holds(plan.res_type, c, key, n) for n, c in enumerate(indexed[1:]))]
    if direct:
        res = _RESOURCES.c
        filters.append(exists().where(res.id == key, res.res_type == plan.res_type,
                                      *(_on_resources(c, res) for c in direct)))
    return key, filters


def _stored(row: Any) -> Stored:
    """A row of (id, res_type, res_id, version_id, last_updated, json), by position."""
    return Stored(int(row[0]), row[1], row[2], int(row[3]), row[4], row[5])


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
    revincluded: set[int] = set()  # the only unbounded part: every resource that refers to a match
    for source, param in plan.revincludes:
        refs = [f"{m.res_type}/{m.res_id}" for m in matches]
        sources = select(f.resource_pk).where(f.param == f"{source}.{param}", f.target.in_(refs))
        rows = conn.execute(select(*_COLUMNS).where(r.res_type == source, r.id.in_(sources)).order_by(r.id)
                            .limit(MAX_INCLUDED + len(pks) + 1))
        referring = {int(row.id): _stored(row) for row in rows}
        found.update(referring)
        revincluded.update(referring.keys() - set(pks))
        if len(revincluded) > MAX_INCLUDED:
            raise SearchError(f"this page would include more than {MAX_INCLUDED} resources; ask for fewer matches "
                              f"(_count) or search {source} directly", "too-costly")
    seen = set(pks)
    return [s for pk, s in sorted(found.items()) if pk not in seen]


def run(conn: Connection, plan: Plan, max_chars: int = MAX_PAGE_CHARS) -> Page:
    """The page of ``plan`` after its cursor, with the total number of matches.

    A page holds at most ``plan.count`` matches and, past its first, at most ``max_chars`` characters of their
    JSON: 500 reports of a few MB each would otherwise be one response of GBs, built in memory. A page cut short
    by size has a next page (its cursor after the last match served), so paging still gives every match.

    The page's keys and its rows come in one statement: ``count + 1`` keys after the
    cursor (one more than the page says whether there is a next page), joined to their
    resources.
    """
    key, filters = _ids(plan)
    total = int(conn.execute(select(func.count(func.distinct(key))).where(*filters)).scalar_one())
    if plan.summary_count or plan.count == 0:
        return Page([], [], total, None)
    keys = (select(key.label("pk")).distinct().where(*filters, key > plan.cursor).order_by(key)
            .limit(plan.count + 1).subquery())
    size = func.length(r.json)
    sized = (select(r.id.label("pk"), size.label("size"), func.sum(size).over(order_by=r.id).label("upto"),
                    func.count().over().label("n_keys"))
             .join(keys, r.id == keys.c.pk).subquery())
    # The page's resources up to MAX_PAGE_CHARS of JSON (the first always, however large): a running sum, so what is
    # left out is never read; the next page starts after the last one served.
    rows = conn.execute(select(*_COLUMNS, sized.c.n_keys).join(sized, r.id == sized.c.pk)
                        .where(or_(sized.c.upto <= max_chars, sized.c.upto == sized.c.size)).order_by(r.id)).all()
    matches = [_stored(row) for row in rows[:plan.count]]
    more = bool(rows) and (len(rows) > plan.count or len(rows) < int(rows[0][6]))
    next_cursor = matches[-1].pk if more else None
    return Page(matches, _included(conn, plan, matches), total, next_cursor)


_READ = FastStatement(select(*_COLUMNS).where(r.res_type == bindparam("t"), r.res_id == bindparam("i")))
_V = fhir_versions.c
_VERSION_COLUMNS = (r.id, r.res_type, r.res_id, _V.version_id, _V.last_updated, _V.json)
_VREAD = FastStatement(select(*_VERSION_COLUMNS).join(fhir_versions, _V.resource_pk == r.id)
                       .where(r.res_type == bindparam("t"), r.res_id == bindparam("i"),
                              _V.version_id == bindparam("v")))
_HISTORY = FastStatement(select(*_VERSION_COLUMNS).join(fhir_versions, _V.resource_pk == r.id)
                         .where(r.id == bindparam("pk")).order_by(_V.version_id.desc()).limit(bindparam("n")))


def read(conn: Connection, res_type: str, res_id: str) -> Stored | None:
    """The current version of a resource, or None (one precompiled statement on the driver's cursor)."""
    row = _READ.execute(conn, {"t": res_type, "i": res_id}).fetchone()
    return _stored(row) if row is not None else None


def vread(conn: Connection, res_type: str, res_id: str, version: int) -> Stored | None:
    """One version of a resource, or None."""
    row = _VREAD.execute(conn, {"t": res_type, "i": res_id, "v": version}).fetchone()
    return _stored(row) if row is not None else None


def history(conn: Connection, res_type: str, res_id: str, limit: int) -> list[Stored] | None:
    """The versions of a resource, newest first (at most ``limit``); None if the resource does not exist."""
    current = read(conn, res_type, res_id)
    if current is None:
        return None
    return [_stored(row) for row in _HISTORY.execute(conn, {"pk": current.pk, "n": limit}).fetchall()]
