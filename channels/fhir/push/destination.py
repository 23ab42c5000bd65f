"""The ``fhir`` destination: one outbox row → the resource's current version upserted on the remote server.

A row names a stored version (:class:`engine.fhir.push.PushRef`). The send reads the
resource's current version from ``fhir_resources``; if it is newer than the row's,
the row is settled without a request (the newer version's own row follows it in the
queue), so several queued versions cost one push and an older version never
overwrites a newer one. Otherwise the resource is upserted by conditional update
(:mod:`.rules`), after its references are resolved (:mod:`.references`):

* ``references: push``: each referenced Patient/ServiceRequest is upserted first, by
  its own conditional update, and the reference names the server's id for it;
* ``references: identifier``: references become logical (``Reference.identifier``).

Either way a reference to a type without an upsert rule (our DICOMweb Endpoint) is
dropped. A DiagnosticReport's documents (``presentedForm`` ``url`` ``Binary/…`` here) are sent
inline, as base64 ``data``: the remote server cannot fetch them from us.

A removal row (the projector removed the resource) is a conditional delete by the
identifier the resource was upserted by, ``DELETE [base]/Type?identifier=system|value``
(200/202/204, or 404: nothing there; settled without a request if the resource is stored
again meanwhile: its new version's row follows).

Outcomes (FHIR R4 http.html): 200/201 sent; 401 → new token, one retry in the same
attempt, then retry later; 408, 429 and 5xx and transport errors → retry later; any
other 4xx (400 invalid, 412 several matches, 422) → permanent, the OperationOutcome's
text is the dead letter's reason.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import Connection, select

from channels.fhir.push.auth import TokenSource, token_source
from channels.fhir.push.references import local_references, logical, remote_body, rewrite
from channels.fhir.push.rules import RULES, conditional_key, conditional_path
from engine.config.models import FhirDestinationConfig
from engine.errors import PermanentDelivery, RetryableDelivery
from engine.fhir.binary import inline
from engine.fhir.push import PushRef
from engine.fhir.store import dumps
from engine.fhir.tables import fhir_resources
from engine.outbox.destination import DestinationContext, register_destination
from engine.tls import client_context

__all__ = ["FhirPushDestination", "outcome_text"]

_RETRY_STATUS = frozenset({408, 425, 429})
_FHIR_JSON = "application/fhir+json"


def outcome_text(response: httpx.Response) -> str:
    """``HTTP <status>: <the OperationOutcome's issues>`` (or the start of the body if it is none)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    issues = body.get("issue", []) if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else []
    parts = [" ".join(filter(None, (str(i.get("severity", "")), str(i.get("code", "")) + ":",
                                    i.get("diagnostics") or i.get("details", {}).get("text", ""))))
             for i in issues if isinstance(i, dict)]
    return f"HTTP {response.status_code}: {'; '.join(parts) if parts else response.text[:300]}"


def _remote_id(response: httpx.Response, res_type: str) -> str:
    """The server's id of the upserted resource: the body's ``id``, else the Location header's."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("id"):
        return str(body["id"])
    location = response.headers.get("location", "")
    found = re.search(rf"/{res_type}/([A-Za-z0-9\-.]{{1,64}})(/_history/[^/]+)?/?$", location)
    if found is None:
        raise RetryableDelivery(f"HTTP {response.status_code} without the resource's id (no body id, no Location)")
    return found.group(1)


def _current(res_type: str, res_id: str) -> Any:
    r = fhir_resources.c

    def read(conn: Connection) -> Any:
        return conn.execute(select(r.version_id, r.json).where(r.res_type == res_type, r.res_id == res_id)).first()
    return read


@dataclass(slots=True)
class _Push:
    """One delivery: the references resolved so far (a Patient named twice is upserted once)."""

    resolved: dict[str, dict[str, Any] | None] = field(default_factory=dict)


class FhirPushDestination:
    """Upserts stored resources on ``base_url`` (see the module docstring)."""

    def __init__(self, config: FhirDestinationConfig, context: DestinationContext) -> None:
        self.name = config.name
        self._config = config
        self._db = context.db
        self._base = config.base_url.rstrip("/")
        self._auth: TokenSource = token_source(config.auth, f"destinations ({config.name}).auth")
        verify = client_context(config.tls) or True
        self._client = httpx.AsyncClient(timeout=config.timeout_seconds, verify=verify)

    async def send(self, payload: bytes, media_type: str) -> str:
        try:
            ref = PushRef.decode(payload)
        except ValueError as exc:
            raise PermanentDelivery(str(exc)) from exc
        row = await self._db.read_async(_current(ref.res_type, ref.res_id))
        if ref.removed:
            return await self._remove(ref, row)
        if row is None:
            return f"not pushed: {ref.res_type}/{ref.res_id} is no longer stored"
        if int(row.version_id) > ref.version:
            return f"not pushed: superseded by version {row.version_id}"
        try:  # httpx's timeout is per phase: bound the whole delivery (token and references included)
            async with asyncio.timeout(self._config.timeout_seconds):
                own = frozenset({f"{ref.res_type}/{ref.res_id}"})
                resource = _loads(row.json)
                if ref.res_type == "DiagnosticReport":  # its documents by value: the server cannot fetch ours
                    resource = await self._db.read_async(lambda c: inline(c, resource))
                status, remote = await self._upsert(resource, _Push(), own)
        except TimeoutError as exc:
            raise RetryableDelivery(*[f"no answer within {self._config.timeout_seconds:g} s"] * 2) from exc
        return f"HTTP {status} {ref.res_type}/{remote} (version {ref.version})"

    async def _remove(self, ref: PushRef, row: Any) -> str:
        """The conditional delete of a removed resource (see the module docstring)."""
        if row is not None:
            return f"not deleted: {ref.res_type}/{ref.res_id} is stored again (version {row.version_id})"
        key = conditional_key({"resourceType": ref.res_type, "identifier": list(ref.identifiers)})
        if key is None:
            return f"not deleted: {ref.res_type}/{ref.res_id} had no identifier the server knows it by"
        path = f"{self._base}/{conditional_path(ref.res_type, key)}"
        try:
            async with asyncio.timeout(self._config.timeout_seconds):
                response = await self._request("DELETE", path, None)
        except TimeoutError as exc:
            raise RetryableDelivery(*[f"no answer within {self._config.timeout_seconds:g} s"] * 2) from exc
        if response.status_code == 404:
            return f"HTTP 404 {ref.res_type}/{ref.res_id} removed: nothing to delete on the server"
        _classify(response)
        return f"HTTP {response.status_code} {ref.res_type}/{ref.res_id} removed (conditional delete)"

    async def _upsert(self, resource: dict[str, Any], push: _Push, chain: frozenset[str]) -> tuple[int, str]:
        """Conditional update of ``resource`` after resolving its references; (status, the server's id)."""
        res_type = str(resource["resourceType"])
        key = conditional_key(resource)
        if key is None:
            raise PermanentDelivery(f"{res_type}/{resource.get('id')} has no identifier to upsert it by")
        mapping = {ref: await self._resolve(ref, push, chain) for ref in local_references(resource)}
        body = remote_body(rewrite(resource, mapping))
        response = await self._put(conditional_path(res_type, key), body)
        return response.status_code, _remote_id(response, res_type)

    async def _resolve(self, ref: str, push: _Push, chain: frozenset[str]) -> dict[str, Any] | None:
        """What ``ref`` becomes on the server; None: dropped (its type has no upsert rule)."""
        res_type, res_id = ref.split("/", 1)
        if res_type not in RULES:
            return None
        if ref in push.resolved:
            return push.resolved[ref]
        row = await self._db.read_async(_current(res_type, res_id))
        if row is None:  # the projector has not stored it yet: it will
            raise RetryableDelivery(f"referenced {ref} is not stored yet")
        target = _loads(row.json)
        key = conditional_key(target)
        if key is None:
            raise PermanentDelivery(f"referenced {ref} has no identifier to find it by on the server")
        if self._config.references == "identifier" or ref in chain:  # a cycle (merged patients' links)
            value: dict[str, Any] = logical(res_type, key)
        else:
            _, remote = await self._upsert(target, push, chain | {ref})
            value = {"reference": f"{res_type}/{remote}"}
        push.resolved[ref] = value
        return value

    async def _put(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """One PUT; a 401 renews the token and tries once more."""
        return _classify(await self._request("PUT", f"{self._base}/{path}", dumps(body).encode()))

    async def _request(self, method: str, url: str, content: bytes | None) -> httpx.Response:
        """One request (a 401 renews the token and tries once more); the response, whatever its status."""
        for first in (True, False):
            headers = {"Accept": _FHIR_JSON, **await self._auth.headers(self._client)}
            if content is not None:
                headers["Content-Type"] = _FHIR_JSON
            try:
                response = await self._client.request(method, url, content=content, headers=headers)
            except httpx.TransportError as exc:
                raise RetryableDelivery(f"{type(exc).__name__}: {exc}", type(exc).__name__) from exc
            if response.status_code != 401 or not first:
                break
            self._auth.invalidate()
        return response

    async def close(self) -> None:
        await self._client.aclose()


def _classify(response: httpx.Response) -> httpx.Response:
    """The response if it is a success; else the DeliveryError its status calls for."""
    status = response.status_code
    if 200 <= status < 300:
        return response
    if status >= 500 or status in _RETRY_STATUS or status == 401:
        raise RetryableDelivery(outcome_text(response), f"HTTP {status}")
    raise PermanentDelivery(outcome_text(response), f"HTTP {status}")


def _loads(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise PermanentDelivery("stored resource is not a JSON object")
    return value


register_destination("fhir", FhirPushDestination, needs_context=True)
