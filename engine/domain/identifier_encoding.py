"""Worklist response identifiers encoded straight from result rows (PS3.5 7.1, 7.5).

Building a pydicom ``Dataset`` element by element and letting pydicom encode it
costs ~0.5 ms a response, most of a broad query's budget. A
:class:`ResponsePlan` resolves the requested keys (:class:`KeySpec`) to result
columns once per query; :meth:`ResponsePlan.encode` then writes each
top-level element's value bytes directly and wraps them in raw data elements
that carry the negotiated encoding, which pydicom and pynetdicom write as
they are; :meth:`ResponsePlan.encode_bytes` returns the whole identifier as
bytes, for the streamed response path (:mod:`channels.dicom.dul_stream`),
which needs no ``Dataset`` at all. The bytes are those pydicom itself writes
for the same values (ascending tags, odd lengths padded, defined-length
sequences and items), which the tests check.

Only little-endian transfer syntaxes and character sets without code
extensions (ISO 2022 escape sequences) take this path: :func:`fast_codec`
says which; everything else keeps the ``Dataset`` path.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from engine.domain.worklist import CODE_SEQUENCES, KeySpec

__all__ = ["ResponsePlan", "fast_codec"]

_SPECIFIC_CHARACTER_SET = BaseTag(0x00080005)
_ITEM = b"\xfe\xff\x00\xe0"
#: Explicit VR: these VRs have a reserved 2 bytes and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_Value = bytes | tuple["_Plan", ...]


@cache
def fast_codec(charset: str) -> str | None:
    """The Python codec for ``charset`` if it needs no code extensions, else None."""
    terms = [t.strip() for t in charset.split("\\")]
    if len(terms) > 1 or terms[0].startswith("ISO 2022"):
        return None
    return python_encoding.get(terms[0] or "ISO_IR 6")


@dataclass(frozen=True, slots=True)
class _Plan:
    """One requested key: where its value comes from, or the plans of its item."""

    tag: int
    vr: str
    column: int | None
    children: tuple[_Plan, ...] | None
    #: A code sequence: the column of its CodeValue; empty, the sequence has no item (``build_response``).
    code: int | None = None


def _plan(key: KeySpec, columns: Mapping[str, int], prefix: str) -> _Plan:
    if key.vr == "SQ":
        children = sorted(key.children or (), key=lambda k: k.tag)  # PS3.5 7.1: ascending tags
        inner = tuple(_plan(k, columns, f"{key.keyword}.") for k in children)
        code = columns.get(f"{key.keyword}.CodeValue") if key.keyword in CODE_SEQUENCES else None
        return _Plan(key.tag, "SQ", None, inner, code)
    column = columns.get(prefix + key.keyword)
    if column is None and prefix:
        column = columns.get(key.keyword)
    return _Plan(key.tag, key.vr, column, None)


def _pad(value: bytes, vr: str) -> bytes:
    if len(value) % 2:
        return value + (b"\0" if vr == "UI" else b" ")
    return value


def _header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    if implicit:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, vr.encode(), length)
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


_CHARSET_TAG = 0x00080005


@cache
def _charset_element(charset: str, implicit: bool) -> bytes:
    value = _pad(charset.encode(), "CS")
    return _header(_CHARSET_TAG, "CS", len(value), implicit) + value


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """The requested keys resolved to result columns, for one query and one transfer syntax."""

    keys: tuple[_Plan, ...]
    implicit: bool

    @classmethod
    def compile(
        cls, keys: Sequence[KeySpec], columns: Sequence[str], implicit: bool
    ) -> ResponsePlan:
        """Resolve ``keys`` against the result's column labels (as ``build_response`` reads a row)."""
        index = {name: n for n, name in enumerate(columns)}
        return cls(tuple(_plan(k, index, "") for k in sorted(keys, key=lambda k: k.tag)), implicit)

    def _value(self, plan: _Plan, row: Sequence[object], codec: str) -> bytes:
        if plan.children is not None:
            if plan.code is not None and not row[plan.code]:
                return b""
            body = b"".join(self._element(p, row, codec) for p in plan.children)
            return _ITEM + struct.pack("<I", len(body)) + body
        value = row[plan.column] if plan.column is not None else None
        return _pad(str(value or "").encode(codec), plan.vr)

    def _element(self, plan: _Plan, row: Sequence[object], codec: str) -> bytes:
        value = self._value(plan, row, codec)
        return _header(plan.tag, plan.vr, len(value), self.implicit) + value

    def encode(self, row: Sequence[object], charset: str, codec: str) -> Dataset:
        """The response identifier for ``row``: raw elements pydicom writes unchanged."""
        charset_value = _pad(charset.encode(), "CS")
        elements: dict[BaseTag, DataElement | RawDataElement] = {
            _SPECIFIC_CHARACTER_SET: self._raw(_SPECIFIC_CHARACTER_SET, "CS", charset_value)
        }
        for plan in self.keys:
            elements[BaseTag(plan.tag)] = self._raw(plan.tag, plan.vr, self._value(plan, row, codec))
        ds = Dataset(elements)
        ds.set_original_encoding(self.implicit, True, [codec])
        return ds

    def encode_bytes(self, row: Sequence[object], charset: str, codec: str) -> bytes:
        """The response identifier for ``row`` as encoded bytes, elements in ascending tag order."""
        parts = [self._element(plan, row, codec) for plan in self.keys]
        before = sum(1 for plan in self.keys if plan.tag < _CHARSET_TAG)  # keys sort below (0008,0005)
        parts.insert(before, _charset_element(charset, self.implicit))
        return b"".join(parts)

    def _raw(self, tag: int, vr: str, value: bytes) -> RawDataElement:
        return RawDataElement(BaseTag(tag), vr, len(value), value, 0, self.implicit, True)
