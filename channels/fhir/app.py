"""The starlette application: ``/fhir`` metadata, read, vread, history and search (GET and POST).

Every handler of PHI runs in this order: the type is one we serve → the caller is
admitted for it (:class:`~channels.fhir.access.Gate`) → the request is parsed → the
data is read → the disclosure is audited → the stored JSON is sent. Every error is an
OperationOutcome with its status (400, 401, 403, 404, 406, 415, 503); anything
unexpected is a 500 OperationOutcome without a traceback (the log has it).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import Connection
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from channels.fhir.access import Gate, peer_of
from channels.fhir.bundle import history_bundle, search_bundle
from channels.fhir.capability import capability_statement
from channels.fhir.front import ReadFront
from channels.fhir.outcome import FHIR_JSON, ApiError, fhir_response, outcome, outcome_response
from engine.auth import Interaction, Principal
from engine.fhir import search
from engine.fhir.binary import Document, read_document
from engine.fhir.history import Cursor, bad_cursor, history_page, parse_cursor
from engine.fhir.instant import search_range
from engine.fhir.query import DEFAULT_COUNT, JSON_TYPES, MAX_COUNT, Plan, SearchError, json_format, parse, whole_number
from engine.fhir.registry import MODULES, by_type
from engine.fhir.store import dumps
from engine.store.database import Database, unavailable

__all__ = ["ApiSettings", "create_app"]

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_READ_PARAMS = {"_format", "_pretty"}
_FORM = "application/x-www-form-urlencoded"
#: The JSON media types an answer may be given in, by the name a client accepts.
_ANSWER_TYPES = {"application/fhir+json": FHIR_JSON, "application/json": "application/json; charset=utf-8",
                 "application/json+fhir": "application/json+fhir; charset=utf-8"}
Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """What the API needs besides the store and the gate."""

    site_zone: tzinfo
    public_base_url: str | None = None
    auth_description: str = "SMART Backend Services (OAuth2 client credentials)"
    #: Largest ``_search`` body read (a search given as a form is bounded like one in the request head).
    max_search_body_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Api:
    db: Database
    gate: Gate
    settings: ApiSettings
    started: datetime

    def base(self, request: Request) -> str:
        if self.settings.public_base_url:
            return self.settings.public_base_url.rstrip("/")
        return str(request.base_url).rstrip("/") + "/fhir"


def _lenient(request: Request) -> bool:
    prefer = request.headers.get("prefer", "")
    return any(p.strip().replace(" ", "") == "handling=lenient" for p in prefer.split(","))


def _quality(params: list[str]) -> float:
    """The ``q`` of a media range's parameters (RFC 9110 12.4.2); 1 when absent or unreadable (tolerant)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return max(0.0, min(float(value.strip()), 1.0))
            except ValueError:
                return 1.0
    return 1.0


def _ranges(accept: str) -> dict[str, float]:
    """The media ranges of an ``Accept`` header (lower case, without parameters) and their quality."""
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        kind, *params = part.split(";")
        kind = kind.strip().lower()
        if kind:
            ranges[kind] = max(ranges.get(kind, 0.0), _quality(params))
    return ranges


def _accepts_json(accept: str) -> bool:
    """True if an ``Accept`` header lets this server answer FHIR JSON (RFC 9110 12.5.1).

    ``application/fhir+json`` takes the quality of the most specific range naming it (itself,
    ``application/*``, ``*/*``): ``;q=0`` means "not acceptable", even beside ``*/*``. Else a JSON
    name this server also answers to (``application/json``, DSTU2's ``application/json+fhir``) with
    a quality above 0 will do. No (or an empty) header: anything goes.
    """
    ranges = _ranges(accept)
    if not ranges:
        return True
    for kind in ("application/fhir+json", "application/*", "*/*"):
        if kind in ranges:
            if ranges[kind] > 0:
                return True
            break
    return any(ranges.get(kind, 0.0) > 0 for kind in JSON_TYPES)


def _answer_type(request: Request) -> str:
    """The media type of a FHIR JSON answer to ``request``: one the client accepts (RFC 9110 12.5.1).

    A ``_format`` naming a JSON media type (query, or a ``_search`` body, kept in ``request.state``) is answered
    in that type, ``_format=json`` in ``application/fhir+json``. Else the ``Accept`` header: ``application/fhir+json``
    unless the client gives another JSON name this server answers to (``application/json``, DSTU2's
    ``application/json+fhir``) a higher quality, or refuses FHIR JSON (``application/fhir+json;q=0,
    application/json`` is answered as ``application/json``). Nothing acceptable (a 406): ``application/fhir+json``.
    """
    fmt = getattr(request.state, "fhir_format", None) or request.query_params.get("_format")
    if fmt is not None:
        kind = fmt.split(";")[0].strip().lower()
        return _ANSWER_TYPES.get(kind, FHIR_JSON)
    ranges = _ranges(request.headers.get("accept", ""))
    if not ranges:
        return FHIR_JSON
    wildcard = next((ranges[k] for k in ("application/*", "*/*") if k in ranges), 0.0)
    qualities = {kind: ranges.get(kind, wildcard if kind != "application/json+fhir" else 0.0)
                 for kind in ("application/fhir+json", "application/json", "application/json+fhir")}
    best = max(qualities.values())
    if best <= 0:
        return FHIR_JSON
    kind = next(k for k, q in qualities.items() if q == best)  # ties: FHIR's own name first
    return _ANSWER_TYPES[kind]


def _as_negotiated(request: Request, response: Response) -> Response:
    """``response`` in the JSON media type the client accepts, when it is a FHIR JSON answer."""
    if response.headers.get("content-type") == FHIR_JSON:
        answer = _answer_type(request)
        if answer != FHIR_JSON:
            response.headers["content-type"] = answer
    return response


def _binary_as_json(request: Request, content_type: str) -> bool | None:
    """Whether a Binary read is answered as the Binary resource in FHIR JSON (True) or as the document's own bytes
    (False), or None: neither is acceptable (R4 http.html#binary: the raw content unless FHIR is asked for).

    ``_format`` (JSON) asks for the resource. Else a JSON type named in ``Accept`` (not a wildcard) wins over the
    document's type unless the document's type is given a higher quality; no ``Accept`` is the raw content; a
    refused document type leaves FHIR JSON if a wildcard accepts it.
    """
    if "_format" in request.query_params:
        return True  # a _format other than JSON was refused before
    accept = request.headers.get("accept", "")
    ranges = _ranges(accept)
    if not ranges:
        return False
    as_json = max((ranges[kind] for kind in JSON_TYPES if kind in ranges), default=0.0)
    essence = content_type.split(";")[0].strip().lower()  # a text document's type says its charset
    major = essence.split("/")[0]
    as_raw = next((ranges[k] for k in (essence, f"{major}/*", "*/*") if k in ranges), 0.0)
    if as_json > 0 and as_json >= as_raw:
        return True
    if as_raw > 0:
        return False
    # the document's type refused ('application/pdf;q=0, */*'): FHIR JSON when a wildcard accepts it
    return True if _accepts_json(accept) else None


def _check_accept(request: Request) -> None:
    """406 unless the request lets this server answer FHIR JSON: ``_format`` (in the query) decides when given,
    as it overrides ``Accept`` (R4 http.html#mime-type), else the ``Accept`` header."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        if not json_format(fmt):
            raise ApiError(406, "not-supported", f"_format={fmt} is not supported: this server answers only FHIR JSON")
        return
    accept = request.headers.get("accept", "")
    if not _accepts_json(accept):
        raise ApiError(406, "not-supported", f"this server answers only FHIR JSON (application/fhir+json), "
                                             f"which Accept: {accept[:200]} does not accept")


def _res_type(request: Request) -> str:
    res_type = str(request.path_params["res_type"])
    if by_type(res_type) is None:
        raise ApiError(404, "not-supported", f"resource type {res_type!r} is not served here")
    return res_type


def _res_id(request: Request) -> str:
    res_id = str(request.path_params["res_id"])
    if not _ID.match(res_id):
        raise ApiError(404, "not-found", "no resource has this id (ids are 1-64 of A-Z a-z 0-9 - .)")
    return res_id


def _read_params(request: Request, allowed: set[str]) -> dict[str, str]:
    params = dict(request.query_params)
    unknown = sorted(set(params) - allowed)
    if unknown and not _lenient(request):
        raise ApiError(400, "not-supported", f"parameter(s) not supported here: {', '.join(unknown)}")
    if not json_format(params.get("_format", "json")):
        raise ApiError(406, "not-supported", "this server answers only FHIR JSON")
    return params


@lru_cache(maxsize=4096)
def _http_date(last_updated: str) -> str:
    return format_datetime(datetime.fromisoformat(last_updated.replace("Z", "+00:00")), usegmt=True)


def _not_modified(request: Request, stored: search.Stored) -> bool:
    etag = f'W/"{stored.version_id}"'
    match = request.headers.get("if-none-match")
    if match is not None:
        return any(m.strip() in (etag, f'"{stored.version_id}"', "*") for m in match.split(","))
    since = request.headers.get("if-modified-since")
    if since is None:
        return False
    try:
        when = parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False
    changed = datetime.fromisoformat(stored.last_updated.replace("Z", "+00:00")).replace(microsecond=0)
    return when.tzinfo is not None and changed <= when


def _version_headers(stored: search.Stored) -> dict[str, str]:
    return {"ETag": f'W/"{stored.version_id}"', "Last-Modified": _http_date(stored.last_updated)}


def _single(db: Database, fn: Callable[[Connection], T]) -> T:
    """``fn``'s one statement on a read connection, without transaction objects: one statement is its own
    consistent snapshot (SQLite autocommit; PostgreSQL's implicit transaction, rolled back on return)."""
    with db.read_engine.connect() as conn:
        return fn(conn)


async def _read(api: _Api, request: Request) -> Response:
    res_type, res_id = _res_type(request), _res_id(request)
    _read_params(request, _READ_PARAMS)
    authorization = request.headers.get("authorization")

    def work() -> tuple[Principal, search.Stored | None]:
        """In one worker thread: admit, then (only then) read."""
        principal = api.gate.check(authorization, [(res_type, "read")])
        return principal, _single(api.db, lambda c: search.read(c, res_type, res_id))

    principal, stored = await asyncio.get_running_loop().run_in_executor(None, work)
    if stored is None:
        raise ApiError(404, "not-found", f"{res_type}/{res_id} is not known")
    headers = _version_headers(stored)
    if _not_modified(request, stored):
        return Response(status_code=304, headers=headers)
    await api.gate.audit(principal, peer_of(request), "fhir.read", res_type, res_id, [f"{res_type}/{res_id}"])
    return fhir_response(stored.json, headers=headers)


async def _binary(api: _Api, request: Request) -> Response:
    """``GET /fhir/Binary/{id}``: a report document (:mod:`engine.fhir.binary`), as its own bytes or as the
    Binary resource. Allowed to whoever may read Binary (``system/Binary.read``/``.rs``/``.r``, ``system/*.read``:
    the scope a SMART backend client asks for to fetch documents) or the DiagnosticReports the documents belong to
    (its ``securityContext``), and audited as a read of both."""
    res_id = _res_id(request)
    _read_params(request, _READ_PARAMS)
    authorization = request.headers.get("authorization")

    def work() -> tuple[Principal, tuple[str, Document] | None]:
        principal = api.gate.check_any(authorization, _BINARY_READ)
        return principal, _single(api.db, lambda c: read_document(c, res_id))

    principal, found = await asyncio.get_running_loop().run_in_executor(None, work)
    if found is None:
        raise ApiError(404, "not-found", f"Binary/{res_id} is not known")
    report, document = found
    as_json = _binary_as_json(request, document.content_type)
    if as_json is None:
        raise ApiError(406, "not-supported", f"Binary/{res_id} is {document.content_type}, or FHIR JSON; "
                                             "Accept allows neither")
    headers = {"ETag": 'W/"1"', "Cache-Control": "no-store"}  # a document of a report version never changes
    if any(m.strip() in ('W/"1"', '"1"', "*") for m in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)  # the client has it already
    await api.gate.audit(principal, peer_of(request), "fhir.read", "Binary", res_id,
                         [f"Binary/{res_id}", f"DiagnosticReport/{report}"])
    if not as_json:
        return Response(document.data, headers={**headers, "X-Security-Context": f"DiagnosticReport/{report}"},
                        media_type=document.content_type)
    resource = {"resourceType": "Binary", "id": res_id, "meta": {"versionId": "1"},
                "contentType": document.content_type,
                "securityContext": {"reference": f"DiagnosticReport/{report}"},
                "data": base64.b64encode(document.data).decode("ascii")}
    return fhir_response(dumps(resource), headers=headers)


async def _vread(api: _Api, request: Request) -> Response:
    res_type, res_id = _res_type(request), _res_id(request)
    principal = await api.gate.admit(request, [(res_type, "read")])
    _read_params(request, _READ_PARAMS)
    text = str(request.path_params["version"])
    version = int(text) if whole_number(text) and len(text) < 10 else -1
    stored = await api.db.read_async(lambda c: search.vread(c, res_type, res_id, version))
    if stored is None:
        raise ApiError(404, "not-found", f"{res_type}/{res_id} has no version {text!r}")
    headers = _version_headers(stored)
    if _not_modified(request, stored):  # a version never changes: a client's cached copy stays good
        return Response(status_code=304, headers=headers)
    await api.gate.audit(principal, peer_of(request), "fhir.vread", res_type, res_id,
                         [f"{res_type}/{res_id}/_history/{version}"])
    return fhir_response(stored.json, headers=headers)


async def _history(api: _Api, request: Request) -> Response:
    res_type, res_id = _res_type(request), _res_id(request)
    principal = await api.gate.admit(request, [(res_type, "read")])
    params = _read_params(request, {*_READ_PARAMS, "_count"})
    count = params.get("_count") or str(MAX_COUNT)  # an empty _count is ignored (R4 3.1.1.5)
    if not whole_number(count):
        raise ApiError(400, "invalid", f"_count must be a whole number, not {count!r}")
    limit = max(1, min(int(count[:9]), MAX_COUNT))
    versions = await api.db.read_async(lambda c: search.history(c, res_type, res_id, limit))
    if versions is None:
        raise ApiError(404, "not-found", f"{res_type}/{res_id} is not known")
    await api.gate.audit(principal, peer_of(request), "fhir.history", res_type, res_id,
                         [f"{res_type}/{res_id}/_history/{v.version_id}" for v in versions])
    return fhir_response(history_bundle(api.base(request), versions, [("self", str(request.url))], len(versions)))


#: What admits a Binary read: read on Binary itself, or on DiagnosticReport (every Binary served is a report's).
_BINARY_READ: tuple[tuple[str, Interaction], ...] = (("Binary", "read"), ("DiagnosticReport", "read"))
_HISTORY_PARAMS = {*_READ_PARAMS, "_count", "_since", "_cursor"}


def _history_query(api: _Api, request: Request) -> tuple[int, str | None, Cursor | None, list[tuple[str, str]]]:
    """``_count`` (clamped), ``_since`` (as a stored instant), ``_cursor``, and the parameters the links echo."""
    params = _read_params(request, _HISTORY_PARAMS)
    count = params.get("_count") or str(DEFAULT_COUNT)  # an empty _count is ignored (R4 3.1.1.5)
    if not whole_number(count):
        raise ApiError(400, "invalid", f"_count must be a whole number, not {count!r}")
    since = params.get("_since")
    try:
        since_at = search_range(since, api.settings.site_zone)[0] if since is not None else None
    except ValueError as exc:
        raise ApiError(400, "invalid", f"_since must be a FHIR instant, not {since!r}") from exc
    cursor = params.get("_cursor")
    if cursor is not None and bad_cursor(cursor):
        raise ApiError(400, "invalid", "_cursor is not a page position of this server")
    echoed: list[tuple[str, str]] = [(k, params[k]) for k in ("_count", "_since") if k in params]
    return max(1, min(int(count[:9]), MAX_COUNT)), since_at, parse_cursor(cursor) if cursor else None, echoed


async def _history_list(api: _Api, request: Request, res_type: str | None, principal: Principal) -> Response:
    """One page of type-level (``res_type``) or system-level (None) history, audited."""
    count, since, cursor, echoed = _history_query(api, request)
    page = await api.db.read_async(lambda c: history_page(c, res_type, count, since, cursor))
    base = api.base(request)
    url = f"{base}/{res_type}/_history" if res_type else f"{base}/_history"
    here = [*echoed, ("_cursor", str(cursor))] if cursor is not None else echoed  # this page, not the first
    links = [("self", f"{url}?{urlencode(here)}" if here else url)]
    if page.next_cursor is not None:
        links.append(("next", f"{url}?{urlencode([*echoed, ('_cursor', str(page.next_cursor))])}"))
    served = [f"{s.res_type}/{s.res_id}/_history/{s.version_id}" for s in page.versions]
    await api.gate.audit(principal, peer_of(request), "fhir.history", res_type or "*", "", served,
                         str(request.url.query))
    return fhir_response(history_bundle(base, page.versions, links, None))


async def _type_history(api: _Api, request: Request) -> Response:
    res_type = _res_type(request)
    principal = await api.gate.admit(request, [(res_type, "read")])
    return await _history_list(api, request, res_type, principal)


async def _system_history(api: _Api, request: Request) -> Response:
    """Every type's versions: the caller must be allowed to read every type served."""
    principal = await api.gate.admit(request, [(m.TYPE, "read") for m in MODULES])
    return await _history_list(api, request, None, principal)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, 413 as soon as it is known to exceed ``limit`` bytes (nothing more is read)."""
    too_large = ApiError(413, "too-long", f"a _search body may have at most {limit} bytes")
    length = request.headers.get("content-length", "")
    if whole_number(length) and int(length) > limit:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except ClientDisconnect as exc:  # nobody is left to answer; not an internal error
        raise ApiError(400, "incomplete", "the client closed the connection before its body was complete") from exc
    return bytes(body)


async def _pairs(request: Request, limit: int) -> list[tuple[str, str]]:
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != _FORM:
            raise ApiError(415, "not-supported", f"POST _search takes {_FORM}, not {kind or 'no body type'}")
        body = await _body(request, limit)
        pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return pairs


def _patient_of(pairs: list[tuple[str, str]]) -> str:
    """The patient a search is about, for the audit index (first patient/subject value)."""
    return next((v for k, v in pairs if k.split(":")[0] in ("patient", "subject")), "")


def _plan(api: _Api, request: Request, res_type: str, pairs: list[tuple[str, str]]) -> Plan:
    """The search's plan; an absolute reference matches only under this server's base (configured, or as the
    request reached it)."""
    bases = tuple(dict.fromkeys((api.base(request), str(request.base_url).rstrip("/") + "/fhir")))
    try:
        return parse(res_type, pairs, api.settings.site_zone, _lenient(request), bases)
    except SearchError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from exc


async def _search(api: _Api, request: Request) -> Response:
    res_type = _res_type(request)
    if request.method == "POST":  # nobody's body is read before the caller is admitted: 401/403 come first
        await api.gate.admit(request, [(res_type, "search")])
    refused: ApiError | None = None
    try:
        pairs = await _pairs(request, api.settings.max_search_body_bytes)
    except ApiError as exc:  # answered after the caller is admitted (again, for a GET, in one hop with the search)
        pairs, refused = [], exc
    body_format = next((v for k, v in pairs if k == "_format"), None) if request.method == "POST" else None
    if body_format is not None:
        request.state.fhir_format = body_format  # the answer's media type, as one in the query would say
    if refused is None and request.method == "POST" and body_format is None:
        try:  # a POST is negotiated here, once its body is read: a _format in the body overrides Accept as well
            _check_accept(request)
        except ApiError as exc:
            refused = exc
    authorization = request.headers.get("authorization")

    def work() -> tuple[Principal, search.Page, str]:
        """In one worker thread: admit, parse, admit the included types, then (only then) search and bundle."""
        principal = api.gate.check(authorization, [(res_type, "search")])
        if refused is not None:
            raise refused
        plan = _plan(api, request, res_type, pairs)
        included = sorted({t for _, _, t in plan.includes} | {s for s, _ in plan.revincludes})
        if included:
            api.gate.check(authorization, [(t, "read") for t in included])
        try:
            page = api.db.read(lambda c: search.run(c, plan))
        except SearchError as exc:  # the page would include too much
            raise ApiError(exc.status, exc.code, str(exc)) from exc
        return principal, page, search_bundle(base, plan, page)

    base = api.base(request)
    principal, page, bundle = await asyncio.get_running_loop().run_in_executor(None, work)
    served = [f"{s.res_type}/{s.res_id}" for s in (*page.matches, *page.included)]
    query = "&".join(f"{k}={v}" for k, v in pairs)
    await api.gate.audit(principal, peer_of(request), "fhir.search", res_type, _patient_of(pairs)[:128], served, query)
    return fhir_response(bundle)


async def _metadata(api: _Api, request: Request) -> Response:
    _read_params(request, {*_READ_PARAMS, "mode"})
    return fhir_response(capability_statement(api.base(request), api.started, api.settings.auth_description))


def _guarded(api: _Api, handler: Callable[[_Api, Request], Awaitable[Response]], negotiated: bool = True) -> Handler:
    """``handler`` answering its errors as OperationOutcomes; ``negotiated``: 406 first unless FHIR JSON is
    acceptable (a Binary read negotiates its own answer)."""
    async def endpoint(request: Request) -> Response:
        try:
            if negotiated:
                _check_accept(request)
            return _as_negotiated(request, await handler(api, request))
        except ApiError as exc:
            return _as_negotiated(request, outcome_response(exc))
        except Exception as exc:
            # A write that could not commit (StoreUnavailable), or a read that could not reach the database
            # (server down or restarting, too many connections, pool exhausted): the client may try again.
            if not unavailable(exc):
                raise
            log.error("FHIR request failed: the store is unavailable (%s)", type(exc).__name__)
            return _as_negotiated(request, fhir_response(outcome("transient", "the store is unavailable; try again"),
                                                         503, {"Retry-After": "5"}))
    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not-found", 405: "not-supported"}.get(status, "exception")
    text = {404: f"nothing is served at {request.url.path}", 405: f"{request.method} is not supported here"}
    return _as_negotiated(request, fhir_response(outcome(code, text.get(status, "request failed")), status))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("FHIR request failed unexpectedly (%s)", type(exc).__name__, exc_info=exc)
    return _as_negotiated(request, fhir_response(outcome("exception", "internal error; the server log has the details"),
                                                 500))


def create_app(db: Database, gate: Gate, settings: ApiSettings, auth_routes: Sequence[Route] = ()) -> ASGIApp:
    """The ASGI application, with every route under ``/fhir``; ``auth_routes`` (the token endpoint and
    the SMART configuration) come first, before ``/fhir/{type}/{id}`` could take them. Reads enter
    through :class:`~channels.fhir.front.ReadFront`, to the same handler as their route's."""
    api = _Api(db, gate, settings, datetime.now(UTC).replace(microsecond=0))
    routes = [
        *auth_routes,
        Route("/fhir/metadata", _guarded(api, _metadata), methods=["GET"]),
        Route("/fhir/_history", _guarded(api, _system_history), methods=["GET"]),
        Route("/fhir/{res_type}", _guarded(api, _search), methods=["GET"]),
        Route("/fhir/{res_type}/_history", _guarded(api, _type_history), methods=["GET"]),
        Route("/fhir/{res_type}/_search", _guarded(api, _search, negotiated=False), methods=["POST"]),
        Route("/fhir/Binary/{res_id}", _guarded(api, _binary, negotiated=False), methods=["GET"]),
        Route("/fhir/{res_type}/{res_id}", _guarded(api, _read), methods=["GET"]),
        Route("/fhir/{res_type}/{res_id}/_history", _guarded(api, _history), methods=["GET"]),
        Route("/fhir/{res_type}/{res_id}/_history/{version}", _guarded(api, _vread), methods=["GET"]),
    ]
    handlers: dict[Any, Any] = {HTTPException: _http_error, Exception: _unexpected}
    app = Starlette(routes=routes, exception_handlers=handlers)
    # A trailing slash is a path we do not serve: answered 404 with an OperationOutcome, not a bare
    # 307 to a URL built from the Host header (wrong behind a proxy, and no body a client can read).
    app.router.redirect_slashes = False
    return ReadFront(app, _guarded(api, _read), _unexpected)
