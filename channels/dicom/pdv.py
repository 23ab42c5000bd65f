"""Presentation data values of a P-DATA-TF PDU, read in pieces as the bytes arrive (PS3.8 9.3.5, E.2).

A P-DATA-TF PDU's body is a list of PDV items: a 4-byte big-endian item length,
the presentation context ID, the message control header (bit 0: command, bit 1:
last fragment), then the fragment. :class:`PdvSplitter` takes the body in chunks
of any size and yields each fragment's bytes as :class:`Piece` slices of those
chunks, so a fragment of any size passes through without being gathered in memory.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from engine.errors import MalformedDataset

__all__ = ["PdvSplitter", "Piece"]

#: Item length (4) + presentation context ID (1) + message control header (1).
_HEADER = 6


@dataclass(frozen=True, slots=True)
class Piece:
    """Part (or all) of one PDV's fragment; ``ends`` on the PDV's last byte."""

    context_id: int
    control: int
    data: memoryview
    ends: bool

    @property
    def is_command(self) -> bool:
        """The fragment belongs to a command set (else to a data set)."""
        return bool(self.control & 1)

    @property
    def is_last(self) -> bool:
        """The last fragment of its command set or data set."""
        return bool(self.control & 2)


class PdvSplitter:
    """Splits one PDU body, fed in chunks, into :class:`Piece` s; :meth:`finish` at the body's end."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._left = 0
        self._context_id = 0
        self._control = 0

    def feed(self, chunk: memoryview) -> Iterator[Piece]:
        """The pieces of ``chunk`` in order; :class:`MalformedDataset` for an impossible item length."""
        pos, end = 0, len(chunk)
        while pos < end:
            if self._left == 0:
                take = min(_HEADER - len(self._head), end - pos)
                self._head += chunk[pos : pos + take]
                pos += take
                if len(self._head) < _HEADER:
                    return
                length, self._context_id, self._control = struct.unpack(">IBB", self._head)
                self._head.clear()
                if length < 2:
                    raise MalformedDataset(f"PDV item length {length} is shorter than its header")
                self._left = length - 2
                if self._left == 0:
                    yield Piece(self._context_id, self._control, chunk[pos:pos], True)
                continue
            take = min(self._left, end - pos)
            self._left -= take
            yield Piece(self._context_id, self._control, chunk[pos : pos + take], self._left == 0)
            pos += take

    def finish(self) -> None:
        """Check that the body ended on an item boundary (else :class:`MalformedDataset`)."""
        if self._left or self._head:
            raise MalformedDataset("a PDV item runs past the end of its P-DATA-TF PDU")
