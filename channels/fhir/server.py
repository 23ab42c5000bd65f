"""The HTTP listener: uvicorn serving the FHIR app on the engine's own event loop.

The socket is bound here (so a port in use is the engine's located configuration
error, and port 0 picks a free one); uvicorn's ``serve()`` is not used because it
installs its own signal handlers, which belong to the engine. Connections are
bounded by ``limit_concurrency`` (uvicorn answers 503 beyond it), request heads and connections
per peer by :mod:`channels.fhir.request_head`; TLS uses the
same contexts as the other listeners (:mod:`engine.tls`). Each response leaves in one
write (:mod:`channels.fhir.one_write`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field

import uvicorn
from starlette.types import ASGIApp

from channels.fhir.request_head import guarded_protocol
from engine.config.models import HTTPConfig
from engine.tls import server_context

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _silence_access_log() -> None:
    """No uvicorn access log: request lines carry query strings, and those carry PHI (identifier=MRN).

    uvicorn only drops it itself when it configures logging, which the engine does instead;
    its protocol logs whenever the logger has a handler anywhere up the tree.
    """
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    access.disabled = True


@dataclass
class HttpServer:
    """One uvicorn server on one bound socket; ``start`` then ``stop``."""

    config: HTTPConfig
    app: ASGIApp
    port: int = 0
    _server: uvicorn.Server | None = None
    _socket: socket.socket | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Bind and serve; OSError if the address cannot be bound."""
        cfg = self.config
        _silence_access_log()
        self._socket = _bind(cfg.host, cfg.port, 1024)
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(self.app, http=guarded_protocol(cfg), lifespan="off",
                                log_config=None, access_log=False, server_header=False,
                                proxy_headers=False, limit_concurrency=cfg.max_connections,
                                timeout_keep_alive=int(cfg.keep_alive_seconds), timeout_graceful_shutdown=5)
        config.load()
        config.ssl = server_context(cfg.tls)  # after load(): ours, as for MLLP and DICOM
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._socket])
        self._server = server
        self._task = asyncio.create_task(server.main_loop(), name="http-main-loop")

    async def stop(self) -> None:
        """Stop accepting, let requests under way finish (5 s at most), close."""
        if self._server is None:
            return
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)
        self._server, self._task, self._socket = None, None, None
