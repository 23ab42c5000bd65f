"""PdvSplitter: a P-DATA-TF body fed in chunks of any size gives the same fragments (PS3.8 9.3.5, E.2)."""

from __future__ import annotations

import struct

import pytest

from channels.dicom.pdv import PdvSplitter
from engine.errors import MalformedDataset


def _pdv(context_id: int, control: int, fragment: bytes) -> bytes:
    return struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment


BODY = _pdv(1, 0x03, b"command") + _pdv(1, 0x00, bytes(range(256)) * 4) + _pdv(3, 0x00, b"") + _pdv(1, 0x02, b"end")
EXPECTED = [(1, 0x03, b"command"), (1, 0x00, bytes(range(256)) * 4), (3, 0x00, b""), (1, 0x02, b"end")]


def _split(body: bytes, chunk: int) -> list[tuple[int, int, bytes]]:
    splitter, fragments, current = PdvSplitter(), [], bytearray()
    for start in range(0, len(body), chunk):
        for piece in splitter.feed(memoryview(body)[start : start + chunk]):
            current += piece.data
            if piece.ends:
                fragments.append((piece.context_id, piece.control, bytes(current)))
                current.clear()
    splitter.finish()
    return fragments


@pytest.mark.parametrize("chunk", [1, 2, 5, 6, 7, 100, 1023, len(BODY)])
def test_fragments_are_the_same_whatever_the_chunk_size(chunk: int) -> None:
    assert _split(BODY, chunk) == EXPECTED


def test_pieces_say_command_and_last() -> None:
    pieces = list(PdvSplitter().feed(memoryview(_pdv(1, 0x03, b"c") + _pdv(1, 0x00, b"d"))))
    assert [(p.is_command, p.is_last) for p in pieces] == [(True, True), (False, False)]


def test_an_item_length_shorter_than_its_header_is_malformed() -> None:
    with pytest.raises(MalformedDataset):
        list(PdvSplitter().feed(memoryview(struct.pack(">IBB", 1, 1, 0))))


@pytest.mark.parametrize("cut", [3, 8, len(BODY) - 1])
def test_a_body_ending_inside_an_item_is_malformed(cut: int) -> None:
    splitter = PdvSplitter()
    list(splitter.feed(memoryview(BODY)[:cut]))
    with pytest.raises(MalformedDataset):
        splitter.finish()
