"""Fuzzing the parsers that read what a DICOM peer sends before pydicom sees it: the structure walk
(engine.archive.structure), the PDV splitter (channels.dicom.pdv) and the command reader
(channels.dicom.dimse_command). Any bytes are either read or refused with MalformedDataset, never
another exception, and what is read is consistent however the bytes arrive."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydicom import dcmread

from channels.dicom.dimse_command import read_command
from channels.dicom.pdv import PdvSplitter
from engine.archive.part10 import dataset_offset
from engine.archive.structure import Encoding, check_structure, top_level_elements
from engine.errors import MalformedDataset
from tests.conftest import CORPUS as SHARED_CORPUS

CORPUS = SHARED_CORPUS / "dicom"


def _datasets() -> list[tuple[bytes, Encoding]]:
    """Data sets of the shared corpus (not deflated) with their encoding: the seeds of the mutations."""
    found = []
    for path in sorted(CORPUS.rglob("*.dcm"))[:24]:
        data = path.read_bytes()
        try:
            ts = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
            offset = dataset_offset(data[:1 << 16])
        except Exception:  # a broken corpus file: not a seed
            continue
        if ts.is_deflated:
            continue
        found.append((data[offset:offset + (1 << 16)], Encoding(bool(ts.is_implicit_VR), bool(ts.is_little_endian))))
    return found


SEEDS = _datasets() if CORPUS.is_dir() else []
seeds = pytest.mark.skipif(not SEEDS, reason=f"the shared corpus is not at {CORPUS}")


def _walk(data: bytes, enc: Encoding) -> bool:
    """True when the walk accepts ``data``; then its top-level spans tile it exactly."""
    try:
        check_structure(data, 0, len(data), enc)
    except MalformedDataset:
        return False
    pos = 0
    for _tag, first, after in top_level_elements(data, 0, len(data), enc):
        assert first == pos and after > first
        pos = after
    assert pos == len(data)
    return True


@seeds
@settings(max_examples=400)
@given(st.data())
def test_a_mutated_data_set_is_walked_or_refused(data: st.DataObject) -> None:
    raw, enc = data.draw(st.sampled_from(SEEDS))
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(buf) - 1))
        kind = data.draw(st.sampled_from(["byte", "length", "cut"]))
        if kind == "byte":
            buf[at] = data.draw(st.integers(0, 255))
        elif kind == "length" and at + 4 <= len(buf):  # a plausible-looking length field
            buf[at:at + 4] = struct.pack("<I", data.draw(st.sampled_from([0, 1, 2, 0xFFFFFFFF, 1 << 31, len(buf)])))
        else:
            del buf[at:]
            if not buf:
                buf = bytearray(b"\x08\x00")
    _walk(bytes(buf), enc)


@given(st.binary(max_size=400), st.booleans(), st.booleans())
@example(b"\xfe\xff\x00\xe0\xff\xff\xff\xff", False, True)  # an item outside a sequence, undefined length
@example(b"\x08\x00\x05\x00SQ\x00\x00\xff\xff\xff\xff", False, True)  # a sequence without its delimiter
def test_any_bytes_are_walked_or_refused(raw: bytes, implicit: bool, little: bool) -> None:
    _walk(raw, Encoding(implicit, little))


def _pdvs(items: list[tuple[int, int, bytes]]) -> bytes:
    return b"".join(struct.pack(">IBB", len(data) + 2, cx, control) + data for cx, control, data in items)


def _split(body: bytes, cuts: list[int]) -> list[tuple[int, int, bytes, bool]]:
    """Pieces of ``body`` fed at the cut points, each PDV's fragments joined."""
    splitter, out, current = PdvSplitter(), [], bytearray()
    view = memoryview(body)
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(body)}), len(body)]
    for start, stop in itertools.pairwise(bounds):
        for piece in splitter.feed(view[start:stop]):
            current += piece.data
            if piece.ends:
                out.append((piece.context_id, piece.control, bytes(current), True))
                current.clear()
    splitter.finish()
    return out


@given(st.lists(st.tuples(st.integers(1, 255), st.integers(0, 3), st.binary(max_size=64)), max_size=6),
       st.lists(st.integers(0, 600), max_size=12))
def test_pdvs_are_split_alike_however_the_pdu_arrives(items: list[tuple[int, int, bytes]], cuts: list[int]) -> None:
    body = _pdvs(items)
    assert _split(body, cuts) == [(cx, control, data, True) for cx, control, data in items]


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_any_pdu_body_is_split_or_refused_alike_however_it_arrives(body: bytes, cuts: list[int]) -> None:
    try:
        whole = _split(body, [])
    except MalformedDataset:
        whole = None
    try:
        chunked = _split(body, cuts)
    except MalformedDataset:
        chunked = None
    assert whole == chunked


@given(st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=40), max_size=8))
def test_a_command_set_is_read_back(elements: dict[int, bytes]) -> None:
    raw = b"".join(struct.pack("<HHI", 0, element, len(value)) + value for element, value in sorted(elements.items()))
    assert read_command(raw) == elements


@given(st.binary(max_size=200))
def test_any_command_bytes_are_read_or_refused(raw: bytes) -> None:
    try:
        elements = read_command(raw)
    except MalformedDataset:
        return
    assert sum(8 + len(v) for v in elements.values()) <= len(raw)
