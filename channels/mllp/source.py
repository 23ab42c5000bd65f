"""The MLLP listener: asyncio, many connections, keep-alive, idle timeout, optional TLS.

Frames on one connection are answered in order. Nothing a peer sends can end
the listener: bad frames are answered or dropped and kept for inspection,
and every per-connection failure is contained in that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from engine.channel.runner import ChannelRunner
from engine.config.models import MLLPSourceConfig
from engine.hl7.framing import FrameDecoder, FrameKind, frame
from engine.tls import server_context

__all__ = ["MLLPServer"]

log = logging.getLogger(__name__)

_READ_SIZE = 65536


class MLLPServer:
    """Serves one channel on one host:port."""

    def __init__(self, config: MLLPSourceConfig, runner: ChannelRunner) -> None:
        self.config = config
        self.runner = runner
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None or not self._server.sockets:
            return self.config.port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, ssl=server_context(self.config.tls),
            limit=_READ_SIZE, reuse_address=True,
        )
        log.info("channel %s listening for MLLP on %s:%s%s", self.runner.name, self.config.host,
                 self.port, " (TLS)" if self.config.tls else "")

    async def stop(self) -> None:
        """Stop accepting, then close open connections."""
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= self.config.max_connections:
            log.warning("channel %s: connection refused, %d open", self.runner.name, len(self._connections))
            writer.close()
            return
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            if task is not None:
                self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        decoder = FrameDecoder(self.config.max_message_bytes)
        idle = self.config.idle_timeout_seconds
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(idle) as deadline:  # one timer per connection, moved on each read
                while True:
                    data = await reader.read(_READ_SIZE)
                    if not data:
                        break
                    deadline.reschedule(None)  # processing time does not count as idle
                    await self._handle(decoder, data, writer, peer)
                    deadline.reschedule(loop.time() + idle)
        except TimeoutError:
            log.info("channel %s: closing idle connection from %s", self.runner.name, peer)
        except (ConnectionError, OSError) as exc:
            log.info("channel %s: connection from %s ended: %s", self.runner.name, peer, type(exc).__name__)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("channel %s: connection from %s failed", self.runner.name, peer)
        finally:
            await self._close(decoder, writer, peer)

    async def _handle(self, decoder: FrameDecoder, data: bytes, writer: asyncio.StreamWriter, peer: str) -> None:
        for event in decoder.feed(data):
            if event.kind is FrameKind.MESSAGE:
                writer.write(frame(await self.runner.receive(event.payload, peer)))
            elif event.kind is FrameKind.OVERSIZE:
                writer.write(frame(await self.runner.reject_oversize(event.payload, peer)))
            else:
                await self.runner.keep(event.payload, peer, "bytes outside an MLLP frame")
        await writer.drain()

    async def _close(self, decoder: FrameDecoder, writer: asyncio.StreamWriter, peer: str) -> None:
        partial = decoder.partial
        with contextlib.suppress(Exception):
            for event in decoder.close():
                await self.runner.keep(event.payload, peer, "bytes outside an MLLP frame")
            if partial.strip():
                await self.runner.keep(partial, peer, "connection closed inside an MLLP frame")
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
