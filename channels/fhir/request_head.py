"""Limits on what an HTTP peer may hold before its request is even read: the request head and connections.

uvicorn's httptools protocol keeps a request's line and headers in memory until the
blank line arrives, with no bound on their size and no deadline: one peer sending an
endless header grew the engine by hundreds of megabytes, and a few hundred connections
that never finish a request (or send nothing) held every ``max_connections`` slot, so
every other client got 503 for as long as they stayed open. :class:`GuardedProtocol`
answers such peers and closes their connection (RFC 9110 15.5.9, RFC 6585 5):

* a request head larger than ``max_request_head_bytes``: 431 Request Header Fields Too Large;
* a request head not complete ``request_head_timeout_seconds`` after the connection opened
  or after the head's first byte: 408 Request Timeout (idle keep-alive connections are
  uvicorn's to close, after ``keep_alive_seconds``);
* a request body not complete ``request_body_timeout_seconds`` after its head (a client
  that announces a body and sends it a byte at a time, or never): 408, unless the
  application has already begun answering;
* more than ``max_connections_per_peer`` connections from one IP address: 503 at once.

Each answer is an OperationOutcome; nothing reaches the application.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from channels.fhir.one_write import OneWriteProtocol
from channels.fhir.outcome import outcome
from engine.config.models import HTTPConfig

__all__ = ["GuardedProtocol", "guarded_protocol"]

#: status -> (reason phrase, OperationOutcome issue code)
_ANSWERS = {
    408: (b"Request Timeout", "timeout"),
    431: (b"Request Header Fields Too Large", "too-long"),
    503: (b"Service Unavailable", "throttled"),
}


class GuardedProtocol(OneWriteProtocol):
    """uvicorn's protocol (through :class:`OneWriteProtocol`) with the limits of the module docstring.

    The limits are class attributes: :func:`guarded_protocol` makes the subclass for one configuration.
    """

    max_request_head_bytes: ClassVar[int] = 64 * 1024
    request_head_timeout_seconds: ClassVar[float] = 10.0
    max_connections_per_peer: ClassVar[int] = 64
    request_body_timeout_seconds: ClassVar[float] = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False  # between a request's first byte and its blank line
        self._began = False  # a request head began during the current data_received
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._peer_connections() > self.max_connections_per_peer:
            self._refuse(503, f"more than {self.max_connections_per_peer} connections from this address")
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; count the bytes of a head that spans reads (the read it began in is not
        counted, so the bound is the limit plus one read) and refuse it past the limit."""
        if self.transport.is_closing():
            return
        self._began = False
        super().data_received(data)
        if not self._in_head or self._began:
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_request_head_bytes:
            self._refuse(431, f"the request line and headers exceed {self.max_request_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._began, self._head_bytes = True, True, 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()
        self._cancel_body_timer()
        self._body_timer = self.loop.call_later(self.request_body_timeout_seconds, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.cycle is not None and self.cycle.response_started:
            return  # the application answers without waiting for the rest
        self._refuse(408, f"the request body was not complete within {self.request_body_timeout_seconds:g} s"
                          " of its headers")

    def _peer_connections(self) -> int:
        host = self.client[0] if self.client else None
        return sum(1 for c in self.connections if (getattr(c, "client", None) or ("",))[0] == host)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.request_head_timeout_seconds, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; its head was complete
        self._refuse(408, f"no complete request line and headers within {self.request_head_timeout_seconds:g} s")

    def _refuse(self, status: int, text: str) -> None:
        """Answer ``status`` with an OperationOutcome and close the connection."""
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self.transport.is_closing():
            return
        reason, code = _ANSWERS[status]
        body = outcome(code, text).encode()
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/fhir+json; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, reason, len(body)))
        self.transport.write(head + body)
        self.transport.close()


def guarded_protocol(config: HTTPConfig) -> type[GuardedProtocol]:
    """The protocol class with ``config``'s limits (uvicorn instantiates it per connection)."""
    limits = {
        "max_request_head_bytes": config.max_request_head_bytes,
        "request_head_timeout_seconds": config.request_head_timeout_seconds,
        "max_connections_per_peer": config.max_connections_per_peer,
        "request_body_timeout_seconds": config.request_body_timeout_seconds,
    }
    return type("ConfiguredGuardedProtocol", (GuardedProtocol,), limits)
