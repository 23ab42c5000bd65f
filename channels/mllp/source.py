"""The MLLP listener: asyncio, many connections, keep-alive, idle timeout, optional TLS.

Each connection is an :class:`asyncio.Protocol`: bytes are framed as they
arrive and frames are answered strictly in order by one task per connection
that lives only while there is work (no stream buffers, no per-read futures:
this is the receive path's hottest loop). Nothing a peer sends can end the
listener: bad frames are answered or dropped and kept for inspection, and every
per-connection failure is contained in that connection.

A peer that half-closes (``shutdown(SHUT_WR)``) after sending still gets every
frame answered, in order; the connection closes after the last answer. What
peers may hold is bounded (channels.mllp.limits): connections per address and
in all, bytes of unfinished and unanswered frames, and time: a connection that
sends nothing is closed after ``first_byte_timeout_seconds``, an unfinished
frame after ``frame_timeout_seconds``, an idle one after ``idle_timeout_seconds``.
One timer a connection covers all three; it is moved only when it fires, or when
a frame that spans reads starts, so an ordinary message costs no timer work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from typing import cast

from channels.mllp.limits import Admission, Throttled
from engine.channel.runner import ChannelRunner, Opened
from engine.config.models import MLLPSourceConfig
from engine.hl7.framing import FrameDecoder, FrameEvent, FrameKind, frame
from engine.tls import server_context

__all__ = ["MLLPServer"]

log = logging.getLogger(__name__)

_write = os.write  # module-level so tests can watch the direct path

#: Frames waiting on one connection before reading from it pauses (pipelining senders).
_MAX_PENDING = 64


class _Load:
    """Frames received by every MLLP connection of this process and not answered yet.

    When a frame is the only one, nothing would share its commit: the channel may
    commit it in the event loop's thread (``ChannelRunner.receive(alone=True)``).
    Only read and written on the event loop.
    """

    frames = 0


_LOAD = _Load()

#: Why bytes that get no answer are stored (the row's error text).
_KEPT_BECAUSE = {
    FrameKind.JUNK: "bytes outside an MLLP frame",
    FrameKind.ABANDONED: "connection closed inside an MLLP frame",
}
#: How the log names what was refused and kept (MLLPServer.dropped).
_REPORTED = {
    FrameKind.OVERSIZE: "a frame over max_message_bytes (answered AR)",
    FrameKind.JUNK: "bytes outside an MLLP frame",
    FrameKind.ABANDONED: "a frame its connection ended inside",
}


class MLLPServer:
    """Serves one channel on one host:port."""

    def __init__(self, config: MLLPSourceConfig, runner: ChannelRunner) -> None:
        self.config = config
        self.runner = runner
        self._server: asyncio.Server | None = None
        self.admission: Admission[_Connection] = Admission(
            config.max_connections, config.max_connections_per_peer, config.max_buffered_bytes
        )
        # Under a flood these would be a line per connection: at most one line per 10 s each.
        self.refused = Throttled(log, logging.WARNING)
        self.evicted = Throttled(log, logging.INFO)
        self.timed_out = Throttled(log, logging.INFO)
        # Oversize frames, junk and abandoned frames: stored REJECTED (radbridge messages list), said here too.
        self.dropped = Throttled(log, logging.WARNING)

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None or not self._server.sockets:
            return self.config.port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting connections."""
        loop = asyncio.get_running_loop()
        tls = server_context(self.config.tls)
        self._server = await loop.create_server(
            lambda: _Connection(self), self.config.host, self.config.port, ssl=tls, reuse_address=True,
            backlog=self.config.backlog,
            ssl_handshake_timeout=self.config.first_byte_timeout_seconds if tls is not None else None,
        )  # fmt: skip
        log.info("channel %s listening for MLLP on %s:%s%s", self.runner.name, self.config.host,
                 self.port, " (TLS)" if self.config.tls else "")

    async def stop(self) -> None:
        """Stop accepting, then close open connections (their pending work is finished or cancelled)."""
        if self._server is None:
            return
        self._server.close()
        connections = list(self.admission.connections)
        for conn in connections:
            conn.abort()
        tasks = [c.task for c in connections if c.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None


class _Connection(asyncio.Protocol):
    """One peer: frames in, answers out, in order."""

    @property
    def runner(self) -> ChannelRunner:
        """The server's current runner: a reload swaps it, and the next frame takes the new one."""
        return self.server.runner

    def __init__(self, server: MLLPServer) -> None:
        self.server = server
        self.config = server.config
        self.decoder = FrameDecoder(self.config.max_message_bytes, self.config.max_kept_bytes)
        # Frames waiting for the connection's task, each with its payload already opened if it was
        # (a lone frame that the writer could not take at once in _start).
        self.pending: deque[tuple[FrameEvent, Opened | None]] = deque()
        self.task: asyncio.Task[None] | None = None
        self._starting = False  # a _start is scheduled
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.host = "?"  # the peer's address: connections are counted per address
        self.paused = False  # too many frames pending: reading waits for the task to catch up
        self.starved = False  # the listener holds too many bytes: reading waits (Admission.change)
        # The transport holds more unsent answers than its high-water mark (the peer does not read them):
        # reading waits until they drain, so a peer that never reads cannot make answers pile up here.
        self.write_full = False
        self._reading = True
        self.closed = False
        self.eof = False  # the peer half-closed: close once everything received is answered
        self._time = asyncio.get_running_loop().time
        self._timer: asyncio.TimerHandle | None = None
        self._active_at = 0.0  # loop time of the last byte or answer (or of the connection)
        self._heard = False  # any byte received
        self._frame_at = 0.0  # loop time an unfinished frame that spans reads started
        self._pending_bytes = 0  # payload bytes in ``pending``
        self._held = 0  # bytes this connection has counted in the admission
        # Plain TCP: answers are written straight to the socket (see _write_now), from the
        # event loop or the writer thread, through a duplicate of the transport's descriptor,
        # so that the transport closing its own can never make ours name another socket.
        self._direct_fd = -1
        self._direct_lock = threading.Lock()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        peername = transport.get_extra_info("peername")
        self.peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        self.host = str(peername[0]) if isinstance(peername, tuple) else self.peer
        admission = self.server.admission
        admitted, victim = admission.admit(self)
        if victim is not None:
            self.server.evicted("channel %s: closed the longest-idle connection (from %s) to make room",
                                self.runner.name, victim.peer)
        if not admitted:
            self.server.refused("channel %s: connection from %s refused: %d open, %d from %s, none idle",
                                self.runner.name, self.peer, len(admission.connections),
                                admission.per_peer.get(self.host, 0), self.host)
            self.closed = True
            self.transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if self.config.tls is None and sock is not None:
            with contextlib.suppress(OSError):
                self._direct_fd = os.dup(sock.fileno())
        self._active_at = self._time()
        first = min(self.config.first_byte_timeout_seconds, self.config.idle_timeout_seconds)
        self._timer = asyncio.get_running_loop().call_at(self._active_at + first, self._on_timer)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._active_at = now = self._time()
        self._heard = True
        decoder = self.decoder
        was_in_frame = decoder.in_frame
        events = decoder.feed(data)
        if events:
            _LOAD.frames += len(events)
            pending = self.pending
            for event in events:  # usually one: a loop costs less than sum() and extend() over generators
                self._pending_bytes += len(event.payload)
                pending.append((event, None))
            self._schedule()
        in_frame = decoder.in_frame
        if in_frame and (events or not was_in_frame):
            self._frame_started(now)
        held = decoder.buffered + self._pending_bytes
        if held != self._held:  # inline _account: once per read that completes or grows a frame
            self._hold(held - self._held)
            self._held = held
        if len(self.pending) > _MAX_PENDING or self._pending_bytes > self.config.max_message_bytes:
            self.paused = True
        elif in_frame and not self.starved and self.server.admission.over(decoder.buffered):
            # (no unfinished frame: never held back for memory, see Admission.over)
            self.starved = True
            self.server.admission.starved.append(self)
        if self.paused or self.starved or not self._reading:  # else reading goes on: nothing to change
            self._set_reading()

    def eof_received(self) -> bool:
        """The peer will send nothing more: keep the connection open until what it sent is answered.

        TLS has no half-close (asyncio ends the session on the peer's close_notify whatever this returns).
        """
        self.eof = True
        return self.config.tls is None and self._working()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        _LOAD.frames -= len(self.pending)  # never processed: no ACK went out, the sender resends
        self.pending.clear()
        self._pending_bytes = 0
        self._close_direct_fd()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.admission.forget(self)
        leftovers = [event for event in self.decoder.close() if event.payload.strip()]
        self._account()
        if leftovers:
            asyncio.get_running_loop().create_task(self._keep(leftovers))
        if exc is not None:  # one line: a peer going away is no error of ours
            log.info("channel %s: connection from %s ended: %s", self.runner.name, self.peer,
                     type(exc).__name__)

    # Admission's view (channels.mllp.limits.Held)

    def idle_since(self) -> float | None:
        """Loop time of the last byte or answer; None while working (never evicted then)."""
        return None if self.closed or self._working() else self._active_at

    def evict(self) -> None:
        """Close to make room for a new connection (an unfinished frame is kept as abandoned)."""
        if self.transport is not None:
            self.transport.close()

    def resume(self) -> None:
        """The listener's bytes are back under the limit: read again."""
        self.starved = False
        self._set_reading()

    def abort(self) -> None:
        """Close at once (listener stopping)."""
        self._close_direct_fd()
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    def _working(self) -> bool:
        return bool(self.pending) or self._starting or (self.task is not None and not self.task.done())

    def _account(self) -> None:
        """Report a change of the bytes this connection holds (unfinished frame and pending frames)."""
        held = self.decoder.buffered + self._pending_bytes
        if held != self._held:
            delta, self._held = held - self._held, held
            self.server.admission.change(delta)

    def _hold(self, delta: int) -> None:
        """Count ``delta`` more bytes held; through ``Admission.change`` only when connections wait on it."""
        admission = self.server.admission
        if admission.starved:
            admission.change(delta)
        else:  # nobody to wake: the same count, without the call
            admission.buffered += delta

    def pause_writing(self) -> None:
        """The transport's write buffer passed its high-water mark: stop taking new frames."""
        self.write_full = True
        self._set_reading()

    def resume_writing(self) -> None:
        """The write buffer drained under its low-water mark: read again."""
        self.write_full = False
        self._set_reading()

    def _set_reading(self) -> None:
        want = not (self.paused or self.starved or self.write_full)
        if want is self._reading or self.closed or self.transport is None:
            return
        self._reading = want
        if want:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def _pop(self) -> tuple[FrameEvent, Opened | None]:
        item = self.pending.popleft()
        size = len(item[0].payload)
        self._pending_bytes -= size
        # What is held was counted after the last change (data_received, _start, connection_lost all
        # account), and only the popped frame left: the count goes down by its size.
        self._held -= size
        self._hold(-size)
        return item

    def _close_direct_fd(self) -> None:
        with self._direct_lock:  # never while another thread is writing through it
            if self._direct_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._direct_fd)
                self._direct_fd = -1

    def _write_now(self, data: bytes) -> int:
        """Write what the socket takes at once, from any thread; 0 when closed, full or broken.

        ``os.write`` releases the GIL for the system call, which on loopback and on a
        virtual machine is a large part of a message's cost; uvloop's transport write
        holds it, stalling the writer thread's commits.
        """
        with self._direct_lock:
            if self._direct_fd < 0:
                return 0
            try:
                return _write(self._direct_fd, data)
            except OSError:  # would block, or the peer is gone: the transport finds out and reports
                return 0

    def _schedule(self) -> None:
        """Have the pending frames answered: :meth:`_start` runs once the loop has read every ready socket."""
        if self._starting or (self.task is not None and not self.task.done()):
            return  # the running task takes new frames too
        self._starting = True
        asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        """Answer a lone frame at once, or start the task that answers the pending frames in order.

        Runs after the loop has called ``data_received`` for every socket that was
        ready, so the load count knows about frames that arrived together (which
        then share a commit through the writer thread). When this connection's one
        frame is the only one in the process, it is opened, committed and answered
        here (no task); if the writer cannot take it at once, the task gets it opened.
        """
        self._starting = False
        if self.closed or not self.pending or self.transport is None or self.transport.is_closing():
            return  # closing (aborted by stop(), say): connection_lost drops what is pending
        if len(self.pending) == 1 and _LOAD.frames == 1 and self.pending[0][0].kind is FrameKind.MESSAGE:
            event, _ = self._pop()
            opened = self._answer_now(event)
            if opened is None:
                return
            self.pending.appendleft((event, opened))
            self._pending_bytes += len(event.payload)
            self._account()
        self.task = asyncio.get_running_loop().create_task(self._work())

    def _answer_now(self, event: FrameEvent) -> Opened | None:
        """Open ``event`` and answer it if the writer commits it in this thread at once.

        None when answered (or the connection failed); else the opened payload for the task.
        """
        answer: bytes | None = None
        try:
            opened = self.runner.open(event.payload)
            answer = self.runner.commit_now(opened, self.peer)
            if answer is None:
                return opened
            _LOAD.frames -= 1
            if self.transport is not None and not self.closed:
                self._send(frame(answer))
                self._settled()
        except Exception as exc:
            if answer is None:  # not counted off yet
                _LOAD.frames -= 1
            self._failed(exc)
        return None

    def _failed(self, exc: Exception) -> None:
        """Close this connection after an unexpected failure: a traceback, unless the peer just went away."""
        if isinstance(exc, OSError):
            log.info("channel %s: connection from %s ended: %s", self.runner.name, self.peer, type(exc).__name__)
        else:
            log.error("channel %s: connection from %s failed", self.runner.name, self.peer, exc_info=exc)
        if self.transport is not None:
            self.transport.abort()

    async def _work(self) -> None:
        try:
            while self.pending and not self.closed:
                early = self._early()
                event, opened = self._pop()
                try:
                    answer = await self._answer(event, early, alone=_LOAD.frames <= 1, opened=opened)
                finally:
                    _LOAD.frames -= 1
                if answer is not None and self.transport is not None and not self.closed:
                    data = frame(answer)
                    if early is not None and early.sent:
                        data = early.rest(data)
                    if data:
                        self._send(data)
                if self.paused and len(self.pending) <= _MAX_PENDING // 2 and (
                    self._pending_bytes <= self.config.max_message_bytes // 2
                ):
                    self.paused = False
                    self._set_reading()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
        finally:
            if not self.closed:
                self._settled()

    def _settled(self) -> None:
        """Everything received is answered: after a half-close the connection closes, else it is idle from now."""
        if self.eof and not self.pending:
            if self.transport is not None:
                self.transport.close()  # after what the transport still has to send
            return
        self._arm_idle()

    def _send(self, data: bytes) -> None:
        """Write an answer; with nothing queued in the transport, straight to the socket.

        What the socket does not take at once, and everything while the transport
        still has bytes queued, goes through the transport, so order is kept.
        """
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            return  # the peer is gone (uvloop raises on a write to a closed transport)
        if not transport.get_write_buffer_size():
            data = data[self._write_now(data):]
            if not data:
                return
        transport.write(data)

    def _early(self) -> _Early | None:
        """A way for the writer thread to send the next answer itself, when nothing can overtake it.

        Only on plain TCP with nothing left in the transport's buffer: this task is the
        only one that writes answers, and it waits for this one before any other.
        """
        transport = self.transport
        if self._direct_fd < 0 or transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return None
        return _Early(self)

    async def _answer(
        self, event: FrameEvent, early: _Early | None = None, alone: bool = False, opened: Opened | None = None
    ) -> bytes | None:
        if event.kind is FrameKind.MESSAGE:
            deliver = early.deliver if early else None
            return await self.runner.receive(event.payload, self.peer, deliver, alone, opened)
        self._report(event)
        if event.kind is FrameKind.OVERSIZE:
            return await self.runner.reject_oversize(event.payload, self.peer)
        await self.runner.keep(event.payload, self.peer, _KEPT_BECAUSE[event.kind])
        return None

    def _report(self, event: FrameEvent) -> None:
        self.server.dropped("channel %s: %s from %s: %d bytes received, the first %d stored (REJECTED)",
                            self.runner.name, _REPORTED[event.kind], self.peer, max(event.size, len(event.payload)),
                            len(event.payload))  # fmt: skip

    async def _keep(self, leftovers: list[FrameEvent]) -> None:
        with contextlib.suppress(Exception):
            if self.task is not None:
                with contextlib.suppress(BaseException):
                    await self.task
            for event in leftovers:
                self._report(event)
                await self.runner.keep(event.payload, self.peer, _KEPT_BECAUSE[event.kind])

    def _arm_idle(self) -> None:
        """The connection is idle from now on: the timeout counts from here.

        The timer is not moved here (not cancelled and made anew for every answer):
        when it fires it finds the deadline that applies then.
        """
        self._active_at = self._time()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(
                self._active_at + self.config.idle_timeout_seconds, self._on_timer
            )

    def _frame_started(self, now: float) -> None:
        """A frame spans reads: make sure the timer fires by its deadline."""
        self._frame_at = now
        deadline = now + self.config.frame_timeout_seconds
        if self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _deadline(self) -> tuple[float, str]:
        """When this connection, as it is now, is to be closed, and why."""
        cfg = self.config
        if not self._heard:
            return self._active_at + min(cfg.first_byte_timeout_seconds, cfg.idle_timeout_seconds), "sent nothing"
        if self.decoder.in_frame:  # too long in all, or idle in the middle
            done_by = min(self._frame_at + cfg.frame_timeout_seconds, self._active_at + cfg.idle_timeout_seconds)
            return done_by, "left a frame unfinished"
        return self._active_at + cfg.idle_timeout_seconds, "idle"

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        if self._working():  # never cut work short: look again a timeout later
            self._timer = loop.call_later(self.config.idle_timeout_seconds, self._on_timer)
            return
        deadline, why = self._deadline()
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._on_timer)
            return
        if why == "idle":
            log.info("channel %s: closing idle connection from %s", self.runner.name, self.peer)
        else:
            self.server.timed_out("channel %s: closed a connection from %s that %s (timeout)",
                                  self.runner.name, self.peer, why)
        if self.transport is not None:
            self.transport.close()


class _Early:
    """One answer the writer thread may send right after its commit (engine.store.database).

    ``deliver`` runs in the writer thread with the answer's bytes; whatever the socket
    does not take at once is left to the connection's task, which sends the rest.
    """

    __slots__ = ("conn", "data", "sent")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.data = b""
        self.sent = 0

    def deliver(self, answer: bytes) -> None:
        self.data = frame(answer)
        self.sent = self.conn._write_now(self.data)

    def rest(self, data: bytes) -> bytes:
        """What is left to send of ``data`` (the framed answer the task was about to send)."""
        if data != self.data:  # cannot happen: the runner returns what it delivered
            log.error("channel %s: early answer differs from the final one", self.conn.runner.name)
            return b""  # a second, different answer would be worse than a short one
        return data[self.sent:]
