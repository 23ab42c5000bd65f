"""Hostile HTTP peers against the FHIR listener (channels/fhir/request_head.py): a real socket each,
answered with a status and an OperationOutcome and closed; the listener keeps serving the others."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channels.fhir.server import HttpServer
from engine.config.models import HTTPConfig

BODY = b'{"resourceType":"Patient","id":"1"}'
GET = b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


async def _answer(request: Request) -> Response:
    return Response(BODY, media_type="application/fhir+json")


async def _read_body(request: Request) -> Response:
    return Response(await request.body(), media_type="application/fhir+json")


APP = Starlette(routes=[Route("/fhir/Patient/1", _answer), Route("/fhir/echo", _read_body, methods=["POST"])])


def _serve(config: HTTPConfig) -> Iterator[int]:
    loop = asyncio.new_event_loop()
    http = HttpServer(config, APP)
    loop.run_until_complete(http.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield http.port
    asyncio.run_coroutine_threadsafe(http.stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


@pytest.fixture
def port() -> Iterator[int]:
    yield from _serve(HTTPConfig(port=0, max_request_head_bytes=4096, request_head_timeout_seconds=1.0,
                                 max_connections_per_peer=8, max_connections=32))


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _answer_of(data: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def _served(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(GET)
        return _read_all(sock).endswith(BODY)


def test_a_header_larger_than_the_limit_is_431_and_the_connection_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\nX-Big: ")
        sent = 0
        with pytest.raises(OSError):  # the server closes while we are still sending
            for _ in range(64 * 1024):  # 64 MiB if nothing stopped it
                sock.sendall(b"A" * 1024)
                sent += 1024
        status, body = _answer_of(_read_all(sock))
    assert status == 431 and body["resourceType"] == "OperationOutcome"
    assert sent < 8 * 1024 * 1024
    assert _served(port)


def test_a_head_within_the_limit_is_served(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(GET.replace(b"Host: a\r\n", b"Host: a\r\nX-Ok: " + b"A" * 3000 + b"\r\n"))
        assert _read_all(sock).endswith(BODY)


def test_a_head_dripping_one_byte_a_second_is_408_after_the_timeout(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"G")
        status, body = _answer_of(_read_all(sock))
    assert status == 408 and body["issue"][0]["code"] == "timeout"  # type: ignore[index]
    assert time.monotonic() - started < 5


def test_silent_connections_are_closed_and_do_not_lock_out_other_clients(port: int) -> None:
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    try:
        answers = [_answer_of(_read_all(s))[0] for s in silent]
    finally:
        for s in silent:
            s.close()
    assert answers == [408] * 8
    assert _served(port)


def test_connections_past_the_per_peer_limit_are_503_and_the_others_still_served(port: int) -> None:
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            status, body = _answer_of(_read_all(extra))
        assert status == 503 and body["issue"][0]["code"] == "throttled"  # type: ignore[index]
        other = socket.socket()
        other.bind(("127.0.0.2", 0))  # another peer: its own quota
        other.settimeout(10)
        other.connect(("127.0.0.1", port))
        with other:
            other.sendall(GET)
            assert _read_all(other).endswith(BODY)
    finally:
        for s in held:
            s.close()


def test_keep_alive_requests_after_the_head_timeout_are_still_served(port: int) -> None:
    """The timer guards heads only: a connection that completes requests is not cut at the timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\n\r\n")
            data = b""
            while not data.endswith(BODY):
                data += sock.recv(65536)
            time.sleep(0.6)  # 1.8 s in all: past the 1 s head timeout, within keep-alive (5 s)


def test_a_body_dripping_after_its_headers_is_408_after_the_body_timeout() -> None:
    config = HTTPConfig(port=0, request_head_timeout_seconds=1.0, request_body_timeout_seconds=1.0)
    for port in _serve(config):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"POST /fhir/echo HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{")
            time.sleep(0.3)
            sock.sendall(b" ")  # a byte now and then: no read ever waits long
            status, body = _answer_of(_read_all(sock))
        assert status == 408 and body["issue"][0]["code"] == "timeout"  # type: ignore[index]
        assert time.monotonic() - started < 5
        assert _served(port)  # the next client is answered


def test_a_body_sent_in_time_is_served() -> None:
    config = HTTPConfig(port=0, request_body_timeout_seconds=2.0)
    for port in _serve(config):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /fhir/echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                         b"Content-Length: 2\r\n\r\n{")
            time.sleep(0.5)
            sock.sendall(b"}")
            data = _read_all(sock)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"{}")
