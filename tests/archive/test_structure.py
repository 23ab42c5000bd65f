"""The element-header walk that decides whether a received dataset is well-formed."""

from __future__ import annotations

import struct

import pytest

from engine.archive.structure import Encoding, check_structure
from engine.errors import MalformedDataset

EXPLICIT = Encoding(False, True)
IMPLICIT = Encoding(True, True)
BIG = Encoding(False, False)


def el(group: int, element: int, vr: bytes, value: bytes, enc: Encoding = EXPLICIT, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    o = enc.order
    if enc.implicit:
        return struct.pack(o + "HHI", group, element, n) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack(o + "HH", group, element) + vr + b"\0\0" + struct.pack(o + "I", n) + value
    return struct.pack(o + "HH", group, element) + vr + struct.pack(o + "H", n) + value


def item(body: bytes, enc: Encoding = EXPLICIT, undefined: bool = False) -> bytes:
    o = enc.order
    if undefined:
        return struct.pack(o + "HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + struct.pack(o + "HHI", 0xFFFE, 0xE00D, 0)
    return struct.pack(o + "HHI", 0xFFFE, 0xE000, len(body)) + body


SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
UID = el(0x0008, 0x0018, b"UI", b"1.2.3\0")


def check(data: bytes, enc: Encoding = EXPLICIT) -> None:
    check_structure(data, 0, len(data), enc)


def test_flat_dataset_in_each_encoding_is_well_formed() -> None:
    check(UID + el(0x0010, 0x0010, b"PN", b"DOE^J "))
    check(el(0x0008, 0x0018, b"UI", b"1.2.3\0", IMPLICIT), IMPLICIT)
    check(el(0x0008, 0x0018, b"UI", b"1.2.3\0", BIG), BIG)


def test_sequences_of_defined_and_undefined_length_are_walked() -> None:
    defined = el(0x0008, 0x1115, b"SQ", item(UID))
    undefined = el(0x0008, 0x1115, b"SQ", item(UID, undefined=True) + SEQ_END, length=0xFFFFFFFF)
    check(defined + undefined)


def test_encapsulated_pixel_data_fragments_are_walked() -> None:
    frags = item(b"") + item(b"\xff\xd8\xff\xd9") + SEQ_END
    check(UID + el(0x7FE0, 0x0010, b"OB", frags, length=0xFFFFFFFF))


@pytest.mark.parametrize(
    "data",
    [
        UID[:-3],  # value cut short
        UID + b"\x10\x00",  # header cut short
        UID + el(0x7FE0, 0x0010, b"OW", b"\0" * 8, length=100),  # pixel data longer than what arrived
        el(0x0008, 0x1115, b"SQ", item(UID), length=0xFFFFFFFF),  # no sequence delimiter
        el(0x0008, 0x1115, b"SQ", item(UID + b"\x08\x00", undefined=False)),  # item content broken
        el(0x7FE0, 0x0010, b"OB", item(b"\0\0"), length=0xFFFFFFFF),  # fragments without delimiter
        UID + b"\x10\x00\x10\x00\x01\x02\x04\x00abcd",  # VR bytes that are not a VR
        item(UID),  # an item outside any sequence
    ],
)
def test_malformed_datasets_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedDataset):
        check(data)


def test_implicit_dictionary_sequence_sent_as_text_is_skipped_by_its_length() -> None:
    """(0040,A170) is SQ in the dictionary; a sender encoded it as CS: bounded, so not refused."""
    check(el(0x0040, 0xA170, b"", b"PURPOSE ", IMPLICIT) + el(0x0008, 0x0018, b"", b"1.2\0", IMPLICIT), IMPLICIT)


def test_implicit_dictionary_sequence_is_walked_when_it_holds_items() -> None:
    broken = el(0x0008, 0x1115, b"", item(b"\x08\x00\x18\x00\xff\x00\x00\x00", IMPLICIT), IMPLICIT)
    with pytest.raises(MalformedDataset):
        check(broken, IMPLICIT)


def test_nesting_has_a_limit() -> None:
    data = UID
    for _ in range(80):
        data = el(0x0008, 0x1115, b"SQ", item(data))
    with pytest.raises(MalformedDataset, match="deep"):
        check(data)
