"""One socket write per response (channels/fhir/one_write.py), and HTTP/1.1 still right through the wrapper."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from channels.fhir.one_write import OneWriteProtocol
from channels.fhir.server import HttpServer
from engine.config.models import HTTPConfig

BODY = b'{"resourceType":"Patient","id":"1"}'


async def _answer(request: Request) -> Response:
    return Response(BODY, media_type="application/fhir+json")


APP = Starlette(routes=[Route("/fhir/Patient/1", _answer)])


class RecordingTransport(asyncio.Transport):
    """Records every write the protocol makes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _writes(protocol_class: type[HttpToolsProtocol], request: bytes) -> RecordingTransport:
    async def serve() -> RecordingTransport:
        config = uvicorn.Config(APP, lifespan="off", log_config=None)
        config.load()
        protocol = protocol_class(config, ServerState(), {}, asyncio.get_running_loop())
        transport = RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(request)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if any(BODY in w for w in transport.writes):
                break
        await asyncio.sleep(0.01)
        return transport

    return asyncio.run(serve())


def test_uvicorn_alone_writes_headers_and_body_separately() -> None:
    """Why the wrapper exists (and a tripwire should uvicorn change how it writes)."""
    transport = _writes(HttpToolsProtocol, b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(transport.writes) == 2


def test_a_response_leaves_in_one_write() -> None:
    transport = _writes(OneWriteProtocol, b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 35" in head.lower() and body == BODY


def test_connection_close_flushes_the_response_before_closing() -> None:
    transport = _writes(OneWriteProtocol, b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert len(transport.writes) == 1 and transport.writes[0].endswith(BODY) and transport.closed


@pytest.fixture
def server() -> Any:
    loop = asyncio.new_event_loop()
    http = HttpServer(HTTPConfig(port=0), APP)
    loop.run_until_complete(http.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield http.port
    asyncio.run_coroutine_threadsafe(http.stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def _read_response(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return rest[:length], rest[length:]


def test_pipelined_keep_alive_requests_over_a_real_socket(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\n\r\n" * 3)
        buffer = b""
        for _ in range(3):
            body, buffer = _read_response(sock, buffer)
            assert body == BODY
        sock.sendall(b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        body, buffer = _read_response(sock, buffer)
        assert body == BODY and sock.recv(100) == b""  # then the server closed
