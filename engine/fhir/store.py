"""Writing built resources: a new version only when the content changed, with its index rows.

``write_all`` runs in the caller's transaction and works in bulk (a few statements per
batch, whatever its size). The stored JSON is what the API serves, byte for byte:
``resourceType``, ``id``, ``meta`` (``versionId``, ``lastUpdated``), then the rest as built.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, tuple_, update

from engine.fhir.model import Built
from engine.fhir.tables import fhir_dates, fhir_refs, fhir_resources, fhir_strings, fhir_tokens, fhir_versions

__all__ = ["dumps", "remove", "write", "write_all"]

_INDEX_TABLES = (fhir_tokens, fhir_refs, fhir_dates, fhir_strings)
r = fhir_resources.c


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 characters as themselves."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _index_rows(pk: int, built: Built, into: dict[Any, list[dict[str, Any]]]) -> None:
    prefix = f"{built.res_type}."
    into[fhir_tokens] += [{"resource_pk": pk, "param": prefix + p, "system": s[:255], "code": c[:255]}
                          for p, s, c in built.tokens]
    into[fhir_refs] += [{"resource_pk": pk, "param": prefix + p, "target": t[:128]} for p, t in built.refs]
    into[fhir_dates] += [{"resource_pk": pk, "param": prefix + p, "low": lo, "high": hi} for p, lo, hi in built.dates]
    into[fhir_strings] += [{"resource_pk": pk, "param": prefix + p, "value": v[:324]} for p, v in built.strings]


def _document(built: Built, version: int, now: str) -> str:
    rest = {k: v for k, v in built.body.items() if k not in ("resourceType", "id", "meta")}
    return dumps({"resourceType": built.res_type, "id": built.res_id,
                  "meta": {"versionId": str(version), "lastUpdated": now}, **rest})


def _existing(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {}
    for start in range(0, len(keys), 500):
        rows = conn.execute(select(r.id, r.res_type, r.res_id, r.version_id, r.content_hash)
                            .where(tuple_(r.res_type, r.res_id).in_(keys[start:start + 500])))
        found.update(((row.res_type, row.res_id), row) for row in rows)
    return found


def write_all(conn: Connection, resources: Sequence[Built], now: str) -> int:
    """Store each changed resource as its next version; return how many changed."""
    digests = {(b.res_type, b.res_id): hashlib.sha256(dumps(b.body).encode()).hexdigest() for b in resources}
    existing = _existing(conn, list(digests))
    new, changed = [], []
    for built in resources:
        row = existing.get((built.res_type, built.res_id))
        if row is None:
            new.append(built)
        elif row.content_hash != digests[(built.res_type, built.res_id)]:
            changed.append((int(row.id), int(row.version_id) + 1, built))
    if new:
        values = [{"res_type": b.res_type, "res_id": b.res_id, "version_id": 1, "last_updated": now,
                   "content_hash": digests[(b.res_type, b.res_id)], "json": _document(b, 1, now)} for b in new]
        pks = conn.execute(insert(fhir_resources).returning(r.id, sort_by_parameter_order=True), values).scalars().all()
        changed_new = [(int(pk), 1, b) for pk, b in zip(pks, new, strict=True)]
    else:
        changed_new = []
    if changed:
        stale = [pk for pk, _, _ in changed]
        for table in _INDEX_TABLES:
            conn.execute(delete(table).where(table.c.resource_pk.in_(stale)))
        statement = update(fhir_resources).where(r.id == bindparam("pk")).values(
            version_id=bindparam("v"), last_updated=now, content_hash=bindparam("h"), json=bindparam("j"))
        conn.execute(statement, [{"pk": pk, "v": v, "h": digests[(b.res_type, b.res_id)], "j": _document(b, v, now)}
                                 for pk, v, b in changed])
    everything = [*changed_new, *changed]
    if not everything:
        return 0
    conn.execute(insert(fhir_versions), [{"resource_pk": pk, "version_id": v, "last_updated": now,
                                          "json": _document(b, v, now)} for pk, v, b in everything])
    rows: dict[Any, list[dict[str, Any]]] = {table: [] for table in _INDEX_TABLES}
    for pk, _, built in everything:
        _index_rows(pk, built, rows)
    for table, values in rows.items():
        if values:
            conn.execute(insert(table), values)
    return len(everything)


def write(conn: Connection, built: Built, now: str) -> bool:
    """Store ``built`` as the next version of its resource; False (nothing written) if unchanged."""
    return write_all(conn, [built], now) == 1


def remove(conn: Connection, res_type: str, res_id: str) -> bool:
    """Delete a resource whose domain rows are gone (its versions and index rows go with it)."""
    pk = conn.execute(select(r.id).where(r.res_type == res_type, r.res_id == res_id)).scalar()
    if pk is None:
        return False
    for table in (*_INDEX_TABLES, fhir_versions):
        conn.execute(delete(table).where(table.c.resource_pk == pk))
    conn.execute(delete(fhir_resources).where(r.id == pk))
    return True
