"""Writing built resources: a new version only when the content changed, with its index rows.

``write`` runs in the caller's transaction. The stored JSON is what the API serves,
byte for byte: ``resourceType``, ``id``, ``meta`` (``versionId``, ``lastUpdated``), then
the rest as built.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from engine.fhir.model import Built
from engine.fhir.tables import fhir_dates, fhir_refs, fhir_resources, fhir_strings, fhir_tokens, fhir_versions

__all__ = ["dumps", "remove", "write"]

_INDEX_TABLES = (fhir_tokens, fhir_refs, fhir_dates, fhir_strings)


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 characters as themselves."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _index_rows(pk: int, built: Built) -> dict[Any, list[dict[str, Any]]]:
    prefix = f"{built.res_type}."
    return {
        fhir_tokens: [{"resource_pk": pk, "param": prefix + p, "system": s[:255], "code": c[:255]}
                      for p, s, c in built.tokens],
        fhir_refs: [{"resource_pk": pk, "param": prefix + p, "target": t[:128]} for p, t in built.refs],
        fhir_dates: [{"resource_pk": pk, "param": prefix + p, "low": lo, "high": hi} for p, lo, hi in built.dates],
        fhir_strings: [{"resource_pk": pk, "param": prefix + p, "value": v[:324]} for p, v in built.strings],
    }


def write(conn: Connection, built: Built, now: str) -> bool:
    """Store ``built`` as the next version of its resource; False (nothing written) if unchanged."""
    content = dumps(built.body)
    digest = hashlib.sha256(content.encode()).hexdigest()
    r = fhir_resources.c
    row = conn.execute(select(r.id, r.version_id, r.content_hash)
                       .where(r.res_type == built.res_type, r.res_id == built.res_id)).first()
    if row is not None and row.content_hash == digest:
        return False
    version = 1 if row is None else int(row.version_id) + 1
    rest = {k: v for k, v in built.body.items() if k not in ("resourceType", "id", "meta")}
    document = dumps({"resourceType": built.res_type, "id": built.res_id,
                      "meta": {"versionId": str(version), "lastUpdated": now}, **rest})
    values = {"version_id": version, "last_updated": now, "content_hash": digest, "json": document}
    if row is None:
        pk = int(conn.execute(insert(fhir_resources).values(res_type=built.res_type, res_id=built.res_id, **values)
                              .returning(r.id)).scalar_one())
    else:
        pk = int(row.id)
        conn.execute(update(fhir_resources).where(r.id == pk).values(**values))
        for table in _INDEX_TABLES:
            conn.execute(delete(table).where(table.c.resource_pk == pk))
    conn.execute(insert(fhir_versions).values(resource_pk=pk, version_id=version, last_updated=now, json=document))
    for table, rows in _index_rows(pk, built).items():
        if rows:
            conn.execute(insert(table), rows)
    return True


def remove(conn: Connection, res_type: str, res_id: str) -> bool:
    """Delete a resource whose domain rows are gone (its versions and index rows go with it)."""
    r = fhir_resources.c
    pk = conn.execute(select(r.id).where(r.res_type == res_type, r.res_id == res_id)).scalar()
    if pk is None:
        return False
    for table in (*_INDEX_TABLES, fhir_versions):
        conn.execute(delete(table).where(table.c.resource_pk == pk))
    conn.execute(delete(fhir_resources).where(r.id == pk))
    return True
