"""Is an encoded C-FIND identifier a well-formed data set? (PS3.5 7.1, 7.5; Little Endian).

pydicom reads lazily and forgivingly: random bytes become a data set of a few
nonsense elements, which the worklist would answer as a match-all query. Before
anything is matched, :func:`structure_problem` walks the encoding and names the
first thing that a data set cannot be:

* an element header or value running past the end of its data set or item;
* tags not in ascending order within one data set (PS3.5 7.1);
* a command or file meta group (0000-0007) inside a data set;
* an explicit VR that is not a VR (PS3.5 6.2);
* undefined length on anything but a sequence (or UN holding one, PS3.5 6.2.2);
* a sequence whose items are not items, or an undefined length without its delimiter
  (PS3.5 7.5);
* nesting deeper than :data:`MAX_DEPTH`.

The values themselves are not looked at here (the matcher checks the ones it uses).
"""

from __future__ import annotations

import struct

from pydicom.datadict import dictionary_VR

__all__ = ["MAX_DEPTH", "structure_problem"]

#: Sequences nested deeper than this are refused (a worklist identifier needs 3).
MAX_DEPTH = 8

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: PS3.5 Table 6.2-1.
VRS = frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
    "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV",
})  # fmt: skip
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


class _Malformed(Exception):
    """The encoding is not a data set; the message says where it fails."""


def structure_problem(data: bytes, implicit_vr: bool) -> str | None:
    """Why ``data`` is not a well-formed Little Endian data set, or None if it is."""
    try:
        end = _dataset(data, 0, len(data), implicit_vr, 0, until_item_end=False)
    except _Malformed as exc:
        return str(exc)
    return None if end == len(data) else "bytes after the data set"


def _tag_at(data: bytes, pos: int, end: int) -> int:
    if pos + 4 > end:
        raise _Malformed(f"element header past the end at byte {pos}")
    group, element = struct.unpack_from("<HH", data, pos)
    return int(group) << 16 | int(element)


def _header(data: bytes, pos: int, end: int, implicit_vr: bool, tag: int) -> tuple[str, int, int]:
    """(VR, value length, value offset) of the element at ``pos``."""
    if implicit_vr:
        if pos + 8 > end:
            raise _Malformed(f"element header past the end at byte {pos}")
        (length,) = struct.unpack_from("<I", data, pos + 4)
        return _dictionary_vr(tag), int(length), pos + 8
    if pos + 8 > end:
        raise _Malformed(f"element header past the end at byte {pos}")
    vr = data[pos + 4 : pos + 6].decode("latin-1")
    if vr not in VRS:
        raise _Malformed(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) has no valid VR")
    if vr in LONG_VRS:
        if pos + 12 > end:
            raise _Malformed(f"element header past the end at byte {pos}")
        (length,) = struct.unpack_from("<I", data, pos + 8)
        return vr, int(length), pos + 12
    (length,) = struct.unpack_from("<H", data, pos + 6)
    return vr, int(length), pos + 8


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:  # private or unknown: its structure cannot be told, only its length
        return "UN"


def _dataset(data: bytes, pos: int, end: int, implicit_vr: bool, depth: int, until_item_end: bool) -> int:
    """Walk elements from ``pos``; return the offset after the data set (after its delimiter if any)."""
    if depth > MAX_DEPTH:
        raise _Malformed("sequences nested too deep")
    previous = -1
    while pos < end:
        tag = _tag_at(data, pos, end)
        if until_item_end and tag == ITEM_END:
            return _delimiter(data, pos, end)
        if tag >> 16 < 0x0008 or tag >> 16 == 0xFFFE:
            raise _Malformed(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) cannot be in a data set")
        if tag <= previous:
            raise _Malformed(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) out of ascending order")
        previous = tag
        vr, length, pos = _header(data, pos, end, implicit_vr, tag)
        pos = _value(data, pos, end, implicit_vr, depth, vr, length, tag)
    if until_item_end:
        raise _Malformed("item without its delimiter")
    return pos


def _value(data: bytes, pos: int, end: int, implicit_vr: bool, depth: int, vr: str, length: int, tag: int) -> int:
    if length == UNDEFINED:
        if vr not in ("SQ", "UN"):
            raise _Malformed(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) has undefined length but is not a sequence")
        return _sequence(data, pos, end, implicit_vr or vr == "UN", depth, until_sequence_end=True)
    if pos + length > end:
        raise _Malformed(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) value runs past the end")
    if vr == "SQ":
        return _sequence(data, pos, pos + length, implicit_vr, depth, until_sequence_end=False)
    return pos + length


def _sequence(data: bytes, pos: int, end: int, implicit_vr: bool, depth: int, until_sequence_end: bool) -> int:
    while pos < end:
        tag = _tag_at(data, pos, end)
        if until_sequence_end and tag == SEQUENCE_END:
            return _delimiter(data, pos, end)
        if tag != ITEM or pos + 8 > end:
            raise _Malformed(f"sequence content at byte {pos} is not an item")
        (length,) = struct.unpack_from("<I", data, pos + 4)
        pos += 8
        if length == UNDEFINED:
            pos = _dataset(data, pos, end, implicit_vr, depth + 1, until_item_end=True)
        elif pos + length > end:
            raise _Malformed(f"item at byte {pos - 8} runs past the end")
        else:
            pos = _dataset(data, pos, pos + length, implicit_vr, depth + 1, until_item_end=False)
    if until_sequence_end:
        raise _Malformed("sequence without its delimiter")
    return pos


def _delimiter(data: bytes, pos: int, end: int) -> int:
    if pos + 8 > end or struct.unpack_from("<I", data, pos + 4)[0] != 0:
        raise _Malformed(f"delimiter at byte {pos} is malformed")
    return pos + 8
