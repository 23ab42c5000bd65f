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


def _document(built: Built, version: int, now: str, body: dict[str, Any] | None = None) -> str:
    rest = {k: v for k, v in (built.body if body is None else body).items() if k not in ("resourceType", "id", "meta")}
    return dumps({"resourceType": built.res_type, "id": built.res_id,
                  "meta": {"versionId": str(version), "lastUpdated": now}, **rest})


def _digest(built: Built) -> str:
    return hashlib.sha256(dumps(built.body).encode()).hexdigest()


def _existing(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {}
    for start in range(0, len(keys), 500):
        rows = conn.execute(select(r.id, r.res_type, r.res_id, r.version_id, r.content_hash)
                            .where(tuple_(r.res_type, r.res_id).in_(keys[start:start + 500])))
        found.update(((row.res_type, row.res_id), row) for row in rows)
    return found


def write_all(conn: Connection, resources: Sequence[Built], now: str) -> int:
    """Store each changed resource as its next version (its own version for a domain-versioned one);
    return how many changed."""
    versioned = [b for b in resources if b.version_id is not None]
    if versioned:
        rest = [b for b in resources if b.version_id is None]
        return _write_versioned(conn, versioned, now) + (write_all(conn, rest, now) if rest else 0)
    digests = {(b.res_type, b.res_id): _digest(b) for b in resources}
    existing = _existing(conn, list(digests))
    new, changed = [], []
    for built in resources:
        row = existing.get((built.res_type, built.res_id))
        if row is None:
            new.append(built)
        elif row.content_hash != digests[(built.res_type, built.res_id)]:
            changed.append((int(row.id), int(row.version_id) + 1, built))
    # Each document is serialised once: the current row and its version row store the same text.
    documents = {id(b): _document(b, 1, now) for b in new} | {id(b): _document(b, v, now) for _, v, b in changed}
    if new:
        values = [{"res_type": b.res_type, "res_id": b.res_id, "version_id": 1, "last_updated": now,
                   "content_hash": digests[(b.res_type, b.res_id)], "json": documents[id(b)]} for b in new]
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
        conn.execute(statement, [{"pk": pk, "v": v, "h": digests[(b.res_type, b.res_id)], "j": documents[id(b)]}
                                 for pk, v, b in changed])
    everything = [*changed_new, *changed]
    if not everything:
        return 0
    conn.execute(insert(fhir_versions), [{"resource_pk": pk, "version_id": v, "last_updated": now,
                                          "json": documents[id(b)]} for pk, v, b in everything])
    rows: dict[Any, list[dict[str, Any]]] = {table: [] for table in _INDEX_TABLES}
    for pk, _, built in everything:
        _index_rows(pk, built, rows)
    for table, values in rows.items():
        if values:
            conn.execute(insert(table), values)
    return len(everything)


def _kept(conn: Connection, pks: list[int]) -> set[tuple[int, int]]:
    v = fhir_versions.c
    return {(int(row.resource_pk), int(row.version_id))
            for row in conn.execute(select(v.resource_pk, v.version_id).where(v.resource_pk.in_(pks)))}


def _write_one_versioned(conn: Connection, built: Built, row: Any, kept: set[tuple[int, int]], now: str) -> bool:
    """Store one domain-versioned resource; False if its current version is stored as it is.

    The current version is written with ``now`` as its ``lastUpdated`` (so ``_lastUpdated``
    searches see it when it appears here); an earlier version the store has not got yet
    (several arrived between two projector cycles) with the time radbridge stored it. Earlier
    versions already stored are never rewritten; the current one is when its content changes
    without a new version (references after a merge).
    """
    assert built.version_id is not None
    version, digest = built.version_id, _digest(built)
    document = _document(built, version, now)
    if row is None:
        pk = int(conn.execute(insert(fhir_resources).returning(r.id), {
            "res_type": built.res_type, "res_id": built.res_id, "version_id": version, "last_updated": now,
            "content_hash": digest, "json": document}).scalar_one())
    elif int(row.version_id) == version and row.content_hash == digest:
        return False
    else:
        pk = int(row.id)
        for table in _INDEX_TABLES:
            conn.execute(delete(table).where(table.c.resource_pk == pk))
        conn.execute(update(fhir_resources).where(r.id == pk).values(
            version_id=version, last_updated=now, content_hash=digest, json=document))
        conn.execute(delete(fhir_versions).where(fhir_versions.c.resource_pk == pk,
                                                 fhir_versions.c.version_id == version))
    rows = [{"resource_pk": pk, "version_id": v.version_id, "last_updated": v.last_updated,
             "json": _document(built, v.version_id, v.last_updated, v.body)}
            for v in built.earlier if (pk, v.version_id) not in kept and v.version_id != version]
    rows.append({"resource_pk": pk, "version_id": version, "last_updated": now, "json": document})
    conn.execute(insert(fhir_versions), rows)
    index: dict[Any, list[dict[str, Any]]] = {table: [] for table in _INDEX_TABLES}
    _index_rows(pk, built, index)
    for table, values in index.items():
        if values:
            conn.execute(insert(table), values)
    return True


def _write_versioned(conn: Connection, resources: Sequence[Built], now: str) -> int:
    """Store resources whose versions the domain numbers (:attr:`Built.version_id`); how many changed."""
    existing = _existing(conn, [(b.res_type, b.res_id) for b in resources])
    kept = _kept(conn, [int(row.id) for row in existing.values()])
    return sum(_write_one_versioned(conn, b, existing.get((b.res_type, b.res_id)), kept, now) for b in resources)


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
