"""The door of the hot read, ``GET /fhir/{type}/{id}``, without the framework's layers in front of it.

Starlette runs every request through two middlewares, the router (one regular expression
per route) and its endpoint wrapper before the handler, about a sixth of the event loop's
CPU per read. A read of a served type with a well-formed id comes here straight to its
handler, with the same :class:`~starlette.requests.Request` and path parameters the route
would give it; an exception the handler does not turn into an OperationOutcome itself is
answered as the application's own handler answers it (500, no traceback). Every other
request (other paths and methods, ``_history``, ``_search``, the SMART endpoints, ids
that are not ids) goes to the application unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.fhir.registry import by_type

__all__ = ["ReadFront"]

_PREFIX = "/fhir/"
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class ReadFront:
    """ASGI: reads to ``read``, everything else to ``app``; ``failed`` answers an unexpected exception."""

    def __init__(self, app: ASGIApp, read: Callable[[Request], Awaitable[Response]],
                 failed: Callable[[Request, Exception], Awaitable[Response]]) -> None:
        self.app, self._read, self._failed = app, read, failed

    @staticmethod
    def _read_params(scope: Scope) -> dict[str, str] | None:
        """``{res_type, res_id}`` if ``scope`` is a read of a served type with a well-formed id, else None."""
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        path: str = scope["path"]
        if not path.startswith(_PREFIX):
            return None
        res_type, slash, res_id = path[len(_PREFIX):].partition("/")
        if not slash or by_type(res_type) is None or not _ID.match(res_id):
            return None
        return {"res_type": res_type, "res_id": res_id}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = self._read_params(scope)
        if params is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response = await self._read(request)
        except Exception as exc:
            response = await self._failed(request, exc)
        await response(scope, receive, send)
