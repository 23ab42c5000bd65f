"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2).

A frame is ``<VT> payload <FS><CR>``. :class:`FrameDecoder` is a pure,
incremental decoder: feed it bytes as they arrive and collect
:class:`FrameEvent` values. It tolerates a missing CR after FS and keeps
bytes found outside any frame so they can be stored for inspection instead
of silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["END_BLOCK", "START_BLOCK", "FrameDecoder", "FrameEvent", "FrameKind", "frame"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"


def frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in an MLLP envelope."""
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


class FrameKind(Enum):
    """What the decoder found."""

    MESSAGE = "message"  # a complete frame's payload
    JUNK = "junk"  # non-blank bytes outside any frame
    OVERSIZE = "oversize"  # a frame longer than the limit (payload truncated to the limit)


@dataclass(frozen=True, slots=True)
class FrameEvent:
    """One decoded unit."""

    kind: FrameKind
    payload: bytes


class FrameDecoder:
    """Incremental MLLP decoder with a maximum frame size."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._oversize = False
        self._junk = bytearray()

    @property
    def partial(self) -> bytes:
        """Bytes of an unfinished frame (kept when a connection closes mid-frame)."""
        return bytes(self._buffer) if self._in_frame else b""

    def feed(self, data: bytes) -> list[FrameEvent]:
        """Consume ``data``; return the events it completes."""
        events: list[FrameEvent] = []
        pos = 0
        size = len(data)
        while pos < size:
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                outside = data[pos:] if start < 0 else data[pos:start]
                self._collect_junk(outside)
                self._flush_junk(events)
                if start < 0:
                    return events
                self._in_frame = True
                pos = start + 1
                continue
            end = data.find(END_BLOCK, pos)
            chunk = data[pos:] if end < 0 else data[pos:end]
            self._append(chunk)
            if end < 0:
                return events
            events.append(self._finish())
            pos = end + 1
            if pos < size and data[pos : pos + 1] == CARRIAGE_RETURN:
                pos += 1
        return events

    def close(self) -> list[FrameEvent]:
        """End of stream: report junk still pending (an open frame stays in ``partial``)."""
        events: list[FrameEvent] = []
        self._flush_junk(events)
        return events

    def _append(self, chunk: bytes) -> None:
        room = self.max_frame_bytes - len(self._buffer)
        if len(chunk) > room:
            self._oversize = True
            chunk = chunk[: max(room, 0)]
        self._buffer += chunk

    def _finish(self) -> FrameEvent:
        kind = FrameKind.OVERSIZE if self._oversize else FrameKind.MESSAGE
        event = FrameEvent(kind, bytes(self._buffer))
        self._buffer.clear()
        self._in_frame = False
        self._oversize = False
        return event

    def _collect_junk(self, outside: bytes) -> None:
        if outside.strip(b"\r\n\t \x00" + CARRIAGE_RETURN + END_BLOCK):
            self._junk += outside[: max(self.max_frame_bytes - len(self._junk), 0)]

    def _flush_junk(self, events: list[FrameEvent]) -> None:
        if self._junk:
            events.append(FrameEvent(FrameKind.JUNK, bytes(self._junk)))
            self._junk.clear()
