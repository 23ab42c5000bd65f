"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2).

A frame is ``<VT> payload <FS><CR>``. :class:`FrameDecoder` is a pure,
incremental decoder: feed it bytes as they arrive and collect
:class:`FrameEvent` values. It tolerates a missing CR after FS and keeps
bytes found outside any frame so they can be stored for inspection instead
of silently dropped.

Memory is bounded: a frame is held up to ``max_frame_bytes``; of a frame that
grows past it, of bytes outside frames, and of a frame the stream ends inside,
only the first ``keep_bytes`` are held (what is stored for inspection), the
rest is counted and dropped as it arrives.
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
    JUNK = "junk"  # non-blank bytes outside any frame (the first keep_bytes)
    OVERSIZE = "oversize"  # a frame longer than the limit (its first keep_bytes)
    ABANDONED = "abandoned"  # the stream ended inside a frame (its first keep_bytes)


@dataclass(frozen=True, slots=True)
class FrameEvent:
    """One decoded unit: ``payload`` is what was kept of ``size`` bytes received."""

    kind: FrameKind
    payload: bytes
    size: int = 0


class FrameDecoder:
    """Incremental MLLP decoder with a maximum frame size.

    ``keep_bytes`` (at most ``max_frame_bytes``; default: that) bounds what is held
    of oversize frames, junk and abandoned frames.
    """

    def __init__(self, max_frame_bytes: int, keep_bytes: int | None = None) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.keep_bytes = max_frame_bytes if keep_bytes is None else min(keep_bytes, max_frame_bytes)
        self._buffer = bytearray()
        self._size = 0  # bytes of the current frame received so far (held or not)
        self._in_frame = False
        self._oversize = False
        self._junk = bytearray()
        self._junk_size = 0  # bytes of junk received since the last JUNK event (held or not)

    @property
    def in_frame(self) -> bool:
        """A frame has started and not ended."""
        return self._in_frame

    @property
    def buffered(self) -> int:
        """Bytes held for frames and junk not yet returned as events."""
        return len(self._buffer) + len(self._junk)

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
                if start < 0:
                    return events  # junk is reported once, when a frame starts or the stream ends
                self._flush_junk(events)
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
        """End of stream: junk still pending, then the unfinished frame (ABANDONED), if any.

        The decoder is empty afterwards.
        """
        events: list[FrameEvent] = []
        self._flush_junk(events)
        if self._in_frame:
            kept = bytes(self._buffer[: self.keep_bytes])
            events.append(FrameEvent(FrameKind.ABANDONED, kept, self._size))
            self._reset()
        return events

    def _append(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._oversize:
            return  # everything kept of it is held already
        if self._size <= self.max_frame_bytes:
            self._buffer += chunk
            return
        self._oversize = True
        room = self.keep_bytes - len(self._buffer)
        if room < 0:
            del self._buffer[self.keep_bytes :]
        elif room:
            self._buffer += chunk[:room]

    def _finish(self) -> FrameEvent:
        kind = FrameKind.OVERSIZE if self._oversize else FrameKind.MESSAGE
        event = FrameEvent(kind, bytes(self._buffer), self._size)
        self._reset()
        return event

    def _reset(self) -> None:
        self._buffer.clear()
        self._size = 0
        self._in_frame = False
        self._oversize = False

    def _collect_junk(self, outside: bytes) -> None:
        if outside.strip(b"\r\n\t \x00" + CARRIAGE_RETURN + END_BLOCK):
            self._junk_size += len(outside)
            self._junk += outside[: max(self.keep_bytes - len(self._junk), 0)]

    def _flush_junk(self, events: list[FrameEvent]) -> None:
        if self._junk:
            events.append(FrameEvent(FrameKind.JUNK, bytes(self._junk), self._junk_size))
            self._junk.clear()
            self._junk_size = 0
