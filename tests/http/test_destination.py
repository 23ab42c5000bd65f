"""The HTTP destination against a real local HTTP server: status classes map to outcomes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from channels.http.destination import HTTPDestination, classify_status
from engine.config.models import HTTPDestinationConfig
from engine.errors import PermanentDelivery, RetryableDelivery

received: list[tuple[str, bytes, str]] = []


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        received.append((self.path, body, self.headers.get("Authorization", "")))
        status = int(self.path.rsplit("/", 1)[1])
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"answer")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        thread.join(5)
        httpd.server_close()


def send(url: str) -> str:
    config = HTTPDestinationConfig(type="http", name="ehr", url=url, headers={"Authorization": "Bearer t"},
                                   timeout_seconds=5)
    destination = HTTPDestination(config)

    async def once() -> str:
        try:
            return await destination.send(b"MSH|^~\\&|x", "application/hl7-v2")
        finally:
            await destination.close()

    return asyncio.run(once())


def test_2xx_is_delivered_with_body_and_headers(server: str) -> None:
    received.clear()
    assert send(f"{server}/in/201") == "answer"
    assert received == [("/in/201", b"MSH|^~\\&|x", "Bearer t")]


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_server_errors_and_throttling_are_retried(server: str, status: int) -> None:
    with pytest.raises(RetryableDelivery):
        send(f"{server}/in/{status}")


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_permanent(server: str, status: int) -> None:
    with pytest.raises(PermanentDelivery):
        send(f"{server}/in/{status}")


def test_unreachable_server_is_retried() -> None:
    with pytest.raises(RetryableDelivery):
        send("http://127.0.0.1:9/in/200")


def test_classification_table() -> None:
    assert classify_status(204, "") == ""
    with pytest.raises(RetryableDelivery):
        classify_status(502, "bad gateway")
    with pytest.raises(PermanentDelivery):
        classify_status(401, "no")
