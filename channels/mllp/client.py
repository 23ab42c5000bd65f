"""An MLLP client: one connection, one message at a time, ACK read with a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from engine.hl7.framing import FrameDecoder, FrameKind, frame

__all__ = ["MLLPClient"]


class MLLPClient:
    """Sends frames and returns the peer's answer payload."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        max_frame_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.ssl_context, self.server_hostname = ssl_context, server_hostname
        self.max_frame_bytes = max_frame_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder(max_frame_bytes)

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        """Open the connection (TLS when a context is given)."""
        hostname = (self.server_hostname or self.host) if self.ssl_context else None
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.ssl_context, server_hostname=hostname),
            self.timeout,
        )
        self._decoder = FrameDecoder(self.max_frame_bytes)

    async def send(self, payload: bytes) -> bytes:
        """Send one message; return the answer's payload. Raises TimeoutError/ConnectionError.

        A kept connection the peer closed while it was idle (a receiver restarted, or closes idle
        connections) is replaced before sending: nothing was sent on it, so this is not a retry, and
        the first message after the peer's restart does not fail and wait for the outbox's backoff."""
        if self.connected and self._reader is not None and self._reader.at_eof():
            await self.close()
        if not self.connected:
            await self.connect()
        assert self._writer is not None and self._reader is not None
        self._writer.write(frame(payload))
        await self._writer.drain()
        return await asyncio.wait_for(self._read_frame(), self.timeout)

    async def _read_frame(self) -> bytes:
        assert self._reader is not None
        while True:
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionResetError("peer closed the connection before answering")
            for event in self._decoder.feed(data):
                if event.kind is not FrameKind.JUNK:
                    return event.payload

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
