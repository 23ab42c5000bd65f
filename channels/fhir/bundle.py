"""Bundles as text: stored resource JSON is spliced in, never parsed (except for ``_elements``)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from engine.fhir.instant import instant
from engine.fhir.query import Plan
from engine.fhir.registry import by_type
from engine.fhir.search import Page, Stored
from engine.fhir.store import dumps

__all__ = ["history_bundle", "search_bundle", "subset"]

_SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_MANDATORY = ("resourceType", "id", "meta")


def subset(document: str, elements: tuple[str, ...]) -> str:
    """``_elements``: only the listed top-level elements (and id, meta and the type's mandatory elements), tagged
    SUBSETTED (R4 3.1.1.5.9)."""
    resource: dict[str, Any] = json.loads(document)
    module = by_type(resource.get("resourceType", ""))
    mandatory = module.MANDATORY if module is not None else ()
    kept = {k: v for k, v in resource.items() if k in _MANDATORY or k in elements or k in mandatory}
    meta = dict(kept.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), _SUBSETTED]
    kept["meta"] = meta
    return dumps(kept)


def _entry(base: str, stored: Stored, mode: str, elements: tuple[str, ...]) -> str:
    document = subset(stored.json, elements) if elements and mode == "match" else stored.json
    full_url = dumps(f"{base}/{stored.res_type}/{stored.res_id}")
    return f'{{"fullUrl":{full_url},"resource":{document},"search":{{"mode":"{mode}"}}}}'


def _outcome_entry(ignored: list[str]) -> str:
    issue = {"severity": "warning", "code": "not-supported",
             "diagnostics": f"ignored (Prefer: handling=lenient): {', '.join(ignored)}"}
    resource = dumps({"resourceType": "OperationOutcome", "issue": [issue]})
    return f'{{"resource":{resource},"search":{{"mode":"outcome"}}}}'


def _head(kind: str, total: int | None, links: list[tuple[str, str]]) -> str:
    head: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4()),
                            "meta": {"lastUpdated": instant(datetime.now(UTC))}, "type": kind}
    if total is not None:
        head["total"] = total
    if links:
        head["link"] = [{"relation": rel, "url": url} for rel, url in links]
    return dumps(head)[:-1]  # the object left open for the entries


def search_bundle(base: str, plan: Plan, page: Page) -> str:
    """The searchset Bundle of one page, with self and next links."""
    url = f"{base}/{plan.res_type}"
    here = [*plan.accepted, ("_cursor", str(plan.cursor))] if plan.cursor else plan.accepted  # this page, not the first
    links = [("self", f"{url}?{urlencode(here)}" if here else url)]
    if page.next_cursor is not None:
        links.append(("next", f"{url}?{urlencode([*plan.accepted, ('_cursor', str(page.next_cursor))])}"))
    entries = [_entry(base, s, "match", plan.elements) for s in page.matches]
    entries += [_entry(base, s, "include", ()) for s in page.included]
    if plan.ignored:
        entries.append(_outcome_entry(plan.ignored))
    tail = f',"entry":[{",".join(entries)}]}}' if entries else "}"
    return _head("searchset", page.total, links) + tail


def _history_entry(base: str, stored: Stored) -> str:
    created = stored.version_id == 1
    request = {"method": "POST" if created else "PUT",
               "url": stored.res_type if created else f"{stored.res_type}/{stored.res_id}"}
    response = {"status": "201 Created" if created else "200 OK", "etag": f'W/"{stored.version_id}"',
                "lastModified": stored.last_updated}
    full_url = dumps(f"{base}/{stored.res_type}/{stored.res_id}/_history/{stored.version_id}")
    return f'{{"fullUrl":{full_url},"resource":{stored.json},"request":{dumps(request)},"response":{dumps(response)}}}'


def history_bundle(base: str, versions: list[Stored], links: list[tuple[str, str]], total: int | None) -> str:
    """A history Bundle, newest version first (``total`` only where it is known without counting)."""
    entries = ",".join(_history_entry(base, s) for s in versions)
    return _head("history", total, links) + (f',"entry":[{entries}]}}' if entries else "}")
