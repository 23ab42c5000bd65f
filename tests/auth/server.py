"""A real uvicorn server on a free loopback port mounting the auth routes and a protected endpoint.

The protected endpoint does what the FHIR API does with the contract: ``authenticate``
then ``require`` (``GET /fhir/{type}`` is a search, ``GET /fhir/{type}/{id}`` a read),
answering an AuthFailure with its status and ``WWW-Authenticate``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.auth.authorizer import www_authenticate
from engine.auth.clients import Registered, add_client
from engine.auth.interface import AuthFailure, Interaction
from engine.auth.smart import SmartAuth
from engine.config.models import AuthConfig
from engine.store.database import Database


@dataclass
class AuthServer:
    """A running server: its base URL, database and SmartAuth."""

    base: str
    db: Database
    auth: SmartAuth

    @property
    def token_url(self) -> str:
        return f"{self.base}/auth/token"

    def register(self, name: str, scopes: list[str], jwks: str | None = None) -> Registered:
        return self.db.writer.call(lambda c: add_client(c, name, scopes, jwks))


def _protected(auth: SmartAuth, interaction: Interaction):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> Response:
        try:
            principal = auth.authorizer.authenticate(request.headers.get("authorization"))
            auth.authorizer.require(principal, request.path_params["type"], interaction)
        except AuthFailure as exc:
            return JSONResponse({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "security" if exc.status == 403 else "login",
                 "diagnostics": exc.description}]}, status_code=exc.status,
                headers={"WWW-Authenticate": www_authenticate(exc)})
        return JSONResponse({"client_id": principal.client_id, "scopes": sorted(principal.scopes)})
    return endpoint


def app_for(auth: SmartAuth) -> Starlette:
    return Starlette(routes=[*auth.routes(),
                             Route("/fhir/{type}", _protected(auth, "search")),
                             Route("/fhir/{type}/{id}", _protected(auth, "read"))])


@contextlib.contextmanager
def serving(db: Database, config: AuthConfig, key: bytes = b"k" * 32) -> Iterator[AuthServer]:
    """Serve on 127.0.0.1 on a port the kernel picks; stop and join the server thread afterwards."""
    auth = SmartAuth(config, db, key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app_for(auth), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield AuthServer(f"http://127.0.0.1:{port}", db, auth)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
