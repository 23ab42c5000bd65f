"""HTTP routes of the authorization server: the token endpoint and the SMART configuration.

* ``POST /auth/token`` (form-encoded): RFC 6749 4.4 client credentials. Success is
  ``200 {"access_token", "token_type": "bearer", "expires_in", "scope"}``; a refusal
  is ``{"error", "error_description"}`` with 400, or 401 for ``invalid_client``
  (with ``WWW-Authenticate: Basic`` when the client tried Basic), and 429 with
  ``Retry-After`` after too many failures. If the database cannot record the answer
  (the assertion's ``jti``, the audit event), no token is issued: 503
  ``temporarily_unavailable``. Never cached (``Cache-Control: no-store``).
* ``GET /fhir/.well-known/smart-configuration``: the SMART discovery document
  (public, no token needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.auth.endpoint import TokenService
from engine.auth.oauth import OAuthError
from engine.auth.request import MAX_BODY_BYTES, parse_token_request
from engine.errors import StoreUnavailable

__all__ = ["RESOURCE_TYPES", "auth_routes", "smart_configuration"]

#: The resource types the FHIR API serves, for ``scopes_supported``.
RESOURCE_TYPES = ("ImagingStudy", "Patient", "ServiceRequest", "DiagnosticReport", "Endpoint")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def smart_configuration(token_url: str, resource_types: Sequence[str]) -> dict[str, Any]:
    """The SMART configuration (SMART App Launch 2.x, "Conformance") of a backend-services server."""
    supported = ["system/*.rs", "system/*.read"]
    for name in resource_types:
        supported += [f"system/{name}.rs", f"system/{name}.read"]
    supported += ["system/Binary.r", "system/Binary.read"]  # report documents: read only (no search)
    return {
        "token_endpoint": token_url,
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": supported,
        "capabilities": ["client-confidential-asymmetric", "client-confidential-symmetric",
                         "permission-v1", "permission-v2"],
    }


async def _body(request: Request) -> bytes:
    """The request body, or OAuthError once it passes MAX_BODY_BYTES (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise OAuthError("invalid_request", f"the body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(exc: OAuthError, basic: bool) -> JSONResponse:
    headers = dict(_NO_STORE)
    if exc.status == 401 and basic:
        headers["WWW-Authenticate"] = 'Basic realm="radbridge"'  # RFC 6749 5.2: the scheme the client used
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _too_many(wait: float) -> JSONResponse:
    body = {"error": "invalid_request", "error_description": "too many failed token requests; retry later"}
    return JSONResponse(body, status_code=429, headers={**_NO_STORE, "Retry-After": str(max(1, math.ceil(wait)))})


def _unavailable() -> JSONResponse:
    body = {"error": "temporarily_unavailable", "error_description": "the store is unavailable; retry later"}
    return JSONResponse(body, status_code=503, headers={**_NO_STORE, "Retry-After": "5"})


def auth_routes(service: TokenService, fhir_base: str = "/fhir", token_path: str = "/auth/token",
                resource_types: Sequence[str] = RESOURCE_TYPES) -> list[Route]:
    """The token endpoint at ``token_path`` and the SMART configuration under ``fhir_base``."""

    def token_url(request: Request) -> str:
        return service.config.token_url or f"{request.url.scheme}://{request.url.netloc}{token_path}"

    async def token(request: Request) -> Response:
        try:
            return await answer(request)
        except (StoreUnavailable, DBAPIError):  # nothing is issued that was not recorded
            return _unavailable()

    async def answer(request: Request) -> Response:
        ip = request.client.host if request.client else ""
        authorization = request.headers.get("authorization")
        if wait := service.retry_after(ip):
            return _too_many(wait)
        try:
            parsed = parse_token_request(await _body(request), request.headers.get("content-type"), authorization)
        except OAuthError as exc:
            await service.refuse(exc, ip, "")
            return _error(exc, authorization is not None)
        if wait := service.retry_after(ip, parsed.credentials.client_id):
            return _too_many(wait)
        try:
            issued = await service.issue(parsed, ip, token_url(request))
        except OAuthError as exc:
            return _error(exc, authorization is not None)
        return JSONResponse(issued.body(), headers=_NO_STORE)

    async def configuration(request: Request) -> Response:
        return JSONResponse(smart_configuration(token_url(request), resource_types))

    return [
        Route(token_path, token, methods=["POST"]),
        Route(f"{fhir_base.rstrip('/')}/.well-known/smart-configuration", configuration, methods=["GET"]),
    ]
