"""Is an encoded dataset well-formed? A walk over element headers that never reads a value.

PS3.5 7.1 (data elements), 7.5 (nested data sets: items and delimiters) and A.4
(encapsulated pixel data: fragments). Every element's length must fit inside its
parent (the file, a sequence item of defined length); undefined lengths must end in
their delimiter; explicit VRs must be two upper-case letters. Values are skipped by
their length, so a multi-gigabyte file costs only its element headers, and ``buf``
may be an ``mmap`` of the file.

Deflated datasets (PS3.5 A.5) are not walked here: their bytes are compressed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from pydicom.datadict import dictionary_VR

from engine.errors import MalformedDataset

__all__ = ["Encoding", "check_structure", "offset_of_tag", "top_level_elements"]

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
#: The first tag above groups 0000 (command) and 0002 (File Meta Information).
_ABOVE_META = 0x00030000
_UNDEFINED = 0xFFFFFFFF
#: VRs with a reserved 2 bytes and a 4-byte length in explicit VR (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Encoding:
    """How a dataset is encoded: implicit or explicit VR, little or big endian."""

    implicit: bool
    little: bool

    @property
    def order(self) -> str:
        """The ``struct`` byte-order prefix."""
        return "<" if self.little else ">"


_IMPLICIT_LE = Encoding(True, True)


def check_structure(buf: bytes | memoryview | object, start: int, end: int, enc: Encoding) -> int:
    """Raise :class:`MalformedDataset` unless ``buf[start:end]`` is a well-formed dataset.

    Returns where the last top-level command or File Meta Information element (group 0000 or 0002, which a
    data set must not hold, PS3.10 7.1) ends, 0 when there is none: the walk visits every top-level element
    anyway, so a sender's misplaced one is found wherever it is (not only first) at no extra pass.
    """
    walker = _Walker(buf, enc)
    walker.dataset(start, end, 0, nested=False)
    return walker.meta_end


def offset_of_tag(buf: bytes | memoryview | object, start: int, end: int, enc: Encoding, tag: int) -> int:
    """Where the first top-level element whose tag is ``tag`` or above begins (``end`` if none).

    Used to split a header from the bulk that follows it (pixel data) without reading
    values; ``buf[start:end]`` must be well-formed (:func:`check_structure` first).
    """
    walker = _Walker(buf, enc)
    pos = start
    while pos < end:
        h = walker.header(pos, end, enc)
        if h.tag >= tag:
            return pos
        pos = walker.value(h, end, 1, enc)
    return end


def top_level_elements(buf: bytes | memoryview | object, start: int, end: int,
                       enc: Encoding) -> Iterator[tuple[int, int, int]]:
    """(tag, first byte, byte after its value) of each top-level element of ``buf[start:end]``.

    ``buf[start:end]`` must be well-formed (:func:`check_structure` first): a value of defined
    length is skipped by its length, one of undefined length walked to its delimiter.
    """
    walker = _Walker(buf, enc)
    pos = start
    while pos < end:
        h = walker.header(pos, end, enc)
        stop = h.value_at + h.length if h.length != _UNDEFINED else walker.value(h, end, 1, enc)
        yield h.tag, pos, stop
        pos = stop


class _Header(NamedTuple):
    """An element's header (a tuple: one is made for every element walked)."""

    tag: int
    vr: bytes
    length: int
    value_at: int


#: Per byte order (``Encoding.little``): the tag's two halves, a 4-byte length, a 2-byte length (compiled once).
_STRUCTS = {little: (struct.Struct(order + "HH"), struct.Struct(order + "I"), struct.Struct(order + "H"))
            for little, order in ((True, "<"), (False, ">"))}


class _Walker:
    def __init__(self, buf: object, enc: Encoding) -> None:
        self.buf = buf
        self.enc = enc
        self.meta_end = 0  # where the last top-level group 0000/0002 element ends (dataset at depth 0)

    def header(self, pos: int, end: int, enc: Encoding) -> _Header:
        if pos + 8 > end:
            raise MalformedDataset(f"element header at byte {pos} runs past the end")
        tag_struct, long_struct, short_struct = _STRUCTS[enc.little]
        buf = self.buf
        group, element = tag_struct.unpack_from(buf, pos)  # type: ignore[arg-type]
        tag = group << 16 | element
        if enc.implicit or group == 0xFFFE:
            return _Header(tag, b"", long_struct.unpack_from(buf, pos + 4)[0], pos + 8)  # type: ignore[arg-type]
        vr = bytes(buf[pos + 4:pos + 6])  # type: ignore[index]
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise MalformedDataset(f"element header at byte {pos} runs past the end")
            return _Header(tag, vr, long_struct.unpack_from(buf, pos + 8)[0], pos + 12)  # type: ignore[arg-type]
        if not (vr.isalpha() and vr.isupper()):
            raise MalformedDataset(f"element ({group:04X},{element:04X}) at byte {pos} has no valid VR")
        return _Header(tag, vr, short_struct.unpack_from(buf, pos + 6)[0], pos + 8)  # type: ignore[arg-type]

    def dataset(self, pos: int, end: int, depth: int, nested: bool, enc: Encoding | None = None) -> int:
        """Walk elements from ``pos``; a ``nested`` item of undefined length ends at its delimiter."""
        enc = enc or self.enc
        if depth > _MAX_DEPTH:
            raise MalformedDataset("sequences nested too deep")
        while pos < end:
            h = self.header(pos, end, enc)
            if h.tag == _ITEM_END and nested:
                return h.value_at
            if h.tag >> 16 == 0xFFFE:
                raise MalformedDataset(f"item or delimiter outside a sequence at byte {pos}")
            pos = self.value(h, end, depth, enc)
            if h.tag < _ABOVE_META and not depth:
                self.meta_end = pos
        if nested:
            raise MalformedDataset("item of undefined length without its delimiter")
        return pos

    def value(self, h: _Header, end: int, depth: int, enc: Encoding) -> int:
        if h.length == _UNDEFINED:
            if h.tag == _PIXEL_DATA or h.vr in (b"OB", b"OW"):
                return self.fragments(h.value_at, end)
            return self.items(h.value_at, end, depth + 1, _IMPLICIT_LE if h.vr == b"UN" else enc)
        stop = h.value_at + h.length
        if stop > end:
            raise MalformedDataset(f"element ({h.tag >> 16:04X},{h.tag & 0xFFFF:04X}) runs past the end")
        if self.is_sequence(h, stop, enc):
            self.items(h.value_at, stop, depth + 1, enc, defined=True)
        return stop

    def is_sequence(self, h: _Header, stop: int, enc: Encoding) -> bool:
        """Explicit VR says so; in implicit VR the dictionary does, if the value starts with an item.

        Senders do encode a dictionary SQ as another VR (a CS in (0040,A170)); such a value,
        bounded by its length, is skipped rather than refused.
        """
        if not enc.implicit:
            return h.vr == b"SQ"
        try:
            in_dictionary = dictionary_VR(h.tag) == "SQ"
        except KeyError:  # private or unknown: skipped by its length
            return False
        if not in_dictionary or h.length == 0 or h.value_at + 4 > stop:
            return in_dictionary
        group, element = struct.unpack_from(enc.order + "HH", self.buf, h.value_at)  # type: ignore[arg-type]
        return bool(group << 16 | element == _ITEM)

    def items(self, pos: int, end: int, depth: int, enc: Encoding, defined: bool = False) -> int:
        """Sequence items up to the sequence delimiter (or ``end`` for a defined length)."""
        while pos < end:
            h = self.header(pos, end, enc)
            if h.tag == _SEQUENCE_END and not defined:
                return h.value_at
            if h.tag != _ITEM:
                raise MalformedDataset(f"expected a sequence item at byte {pos}")
            if h.length == _UNDEFINED:
                pos = self.dataset(h.value_at, end, depth, nested=True, enc=enc)
                continue
            stop = h.value_at + h.length
            if stop > end:
                raise MalformedDataset(f"sequence item at byte {pos} runs past the end")
            self.dataset(h.value_at, stop, depth, nested=False, enc=enc)
            pos = stop
        if not defined:
            raise MalformedDataset("sequence of undefined length without its delimiter")
        return pos

    def fragments(self, pos: int, end: int) -> int:
        """Encapsulated pixel data: the offset table and fragments, then the delimiter (PS3.5 A.4)."""
        while True:
            h = self.header(pos, end, self.enc)
            if h.tag == _SEQUENCE_END:
                return h.value_at
            if h.tag != _ITEM or h.length == _UNDEFINED or h.value_at + h.length > end:
                raise MalformedDataset(f"bad pixel data fragment at byte {pos}")
            pos = h.value_at + h.length
