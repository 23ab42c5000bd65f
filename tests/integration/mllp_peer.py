"""A real MLLP receiver for tests: records messages, answers as told, can be down or slow.

It runs its own asyncio loop in a thread so synchronous tests (which also run
CLI subprocesses) can steer it between steps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Received:
    """One message as it arrived."""

    control_id: str
    patient_id: str
    payload: bytes


def _fields(payload: bytes, segment: str) -> list[str]:
    for line in payload.decode("latin-1").split("\r"):
        if line.startswith(segment + "|"):
            return line.split("|")
    return []


def _ack(payload: bytes, code: str) -> bytes:
    control_id = _fields(payload, "MSH")[9]
    text = (f"MSH|^~\\&|PEER|TEST|||20240101120000||ACK|A{control_id}|P|2.5.1\r"
            f"MSA|{code}|{control_id}\r")
    return b"\x0b" + text.encode("ascii") + b"\x1c\r"


class MLLPPeer:
    """Listens on ``port`` while ``up``; answers ``code``; delays the next ``slow`` ACKs."""

    def __init__(self, port: int, code: str = "AA") -> None:
        self.port = port
        self.code = code
        self.slow_acks = 0
        self.slow_seconds = 0.0
        self.received: list[Received] = []
        self.timeouts_caused = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def up(self) -> None:
        """Start listening."""
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def down(self) -> None:
        """Stop listening and drop open connections."""
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def answer(self, code: str) -> None:
        self.code = code

    def delay_next_ack(self, seconds: float) -> None:
        """Hold the next ACK back for ``seconds`` (longer than the sender's timeout)."""
        self.slow_seconds = seconds
        self.slow_acks = 1

    def close(self) -> None:
        self.down()
        asyncio.run_coroutine_threadsafe(self._cancel_handlers(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _cancel_handlers(self) -> None:
        """End connection handlers still running (a delayed ACK still sleeping)."""
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        """Wait until ``count`` messages have arrived (duplicates included)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.messages())} of {count} messages arrived in {timeout}s")

    async def _start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                      reuse_address=True)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        self._writers.add(writer)
        try:
            while data := await reader.read(65536):
                buffer += data
                while b"\x1c\r" in buffer:
                    block, buffer = buffer.split(b"\x1c\r", 1)
                    await self._reply(block.lstrip(b"\x0b"), writer)
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _reply(self, payload: bytes, writer: asyncio.StreamWriter) -> None:
        msh, pid = _fields(payload, "MSH"), _fields(payload, "PID")
        with self._lock:
            self.received.append(Received(msh[9], pid[3].split("^")[0] if pid else "", payload))
        if self.slow_acks:
            self.slow_acks -= 1
            self.timeouts_caused += 1
            await asyncio.sleep(self.slow_seconds)
        writer.write(_ack(payload, self.code))
        await writer.drain()
