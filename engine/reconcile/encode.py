"""The elements a coercion writes, encoded byte for byte as pydicom 3.0's ``filewriter`` encodes them.

A coerced header re-encodes a handful of elements: the new values (text, and sequences of
items holding text), and the OriginalAttributesSequence item holding the previous values.
pydicom's ``write_data_element`` costs ~30 µs an element in buffers, lookups and checks;
:class:`ElementWriter` produces the same bytes for the common cases directly:

* a raw (never decoded) element: its value as read, framed again;
* a sequence: its items, each a dataset written as ``write_dataset`` writes it (tag order,
  retired group lengths left out, elements decoded first when the item was not read in this
  encoding and character set), with defined or undefined lengths as the items say;
* a single text value (``str``): LO, LT, SH, ST, UC, UT in the dataset's character set;
  AE, AS, CS, DA, DT, TM, UR in the default repertoire; UI padded with NUL; a PN value
  through ``PersonName.encode``.

Anything else (numbers, bytes, several values, a value too long for its VR's length field)
goes through pydicom's own ``write_data_element``, so the result is always pydicom's
encoding. tests/reconcile/test_splice.py compares the two over corpus and generated headers.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from pydicom.charset import convert_encodings, default_encoding, encode_string
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, PersonName

from engine.archive.structure import Encoding

__all__ = ["ElementWriter"]

_UNDEFINED = 0xFFFFFFFF
_TEXT = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})  # write_text: the character set
_ASCII = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UR"})  # write_string (DA/DT/TM given as str)
_LONG = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)


class ElementWriter:
    """Encodes elements in one encoding (the received transfer syntax's)."""

    def __init__(self, enc: Encoding) -> None:
        self.enc = enc
        o = enc.order
        self._tag = struct.Struct(o + "HH")
        self._ul = struct.Struct(o + "I")
        self._us = struct.Struct(o + "H")
        self._item = self._tag.pack(0xFFFE, 0xE000)
        self._item_end = self._tag.pack(0xFFFE, 0xE00D) + b"\0\0\0\0"
        self._sequence_end = self._tag.pack(0xFFFE, 0xE0DD) + b"\0\0\0\0"

    def element(self, elem: DataElement | RawDataElement, charset: Any) -> bytes:
        """``elem`` as ``write_data_element(fp, elem, charset)`` writes it (``charset``: a
        SpecificCharacterSet value, or the encodings a parent dataset passes down)."""
        return self._encoded(elem, convert_encodings(charset or [default_encoding]))

    def dataset(self, ds: Dataset, parent_encodings: Sequence[str]) -> bytes:
        """``ds`` as ``write_dataset(fp, ds, parent_encodings)`` writes it (a sequence item's body)."""
        get: Any = ds.get_item
        if (self.enc.implicit, self.enc.little) != ds.original_encoding or (
                ds.original_character_set != ds._character_set):
            ds = correct_ambiguous_vr(ds, self.enc.little)
            get = ds.__getitem__  # decoded first, to be encoded again in this encoding and character set
        encodings = convert_encodings(ds.get("SpecificCharacterSet", parent_encodings) or [default_encoding])
        return b"".join(self._encoded(get(tag), encodings) for tag in sorted(ds.keys())
                        if not (tag.element == 0 and tag.group > 6))

    def _encoded(self, elem: DataElement | RawDataElement, encodings: list[str]) -> bytes:
        framed = self._fast(elem, encodings)
        return framed if framed is not None else self._pydicom(elem, encodings)

    def _fast(self, elem: DataElement | RawDataElement, encodings: list[str]) -> bytes | None:
        vr = elem.VR
        if not self.enc.implicit and (vr is None or len(vr) != 2):
            return None
        if isinstance(elem, RawDataElement):
            raw = elem.value if elem.value is not None else b""
            return self._frame(elem.tag, vr, raw, elem.length == _UNDEFINED)
        if vr == "SQ":
            body = b"".join(self._sequence_item(item, encodings) for item in elem.value)
            return self._frame(elem.tag, vr, body, elem.is_undefined_length)
        text = self._text(vr, elem.value, encodings)
        if text is None or elem.is_undefined_length:
            return None
        return self._frame(elem.tag, vr, text, False)

    def _text(self, vr: str | None, value: Any, encodings: list[str]) -> bytes | None:
        """A single text value as pydicom's writer for ``vr`` encodes it, else None."""
        if value is None or (isinstance(value, str) and not value):
            return b""  # empty: not written, length 0
        if vr == "PN" and type(value) is PersonName:
            data = value.encode(encodings) if value else b""
            return data + b" " if len(data) % 2 else data
        if not isinstance(value, str):  # str, or pydicom's UID (a str)
            return None
        try:
            if vr in _TEXT:
                data = encode_string(value, encodings)
                return data + b" " if len(data) % 2 else data
            if vr in _ASCII or vr == "UI":
                padded = value + ("\0" if vr == "UI" else " ") if len(value) % 2 else value
                return padded.encode(default_encoding)
        except UnicodeError:
            return None  # pydicom's own path decides (and reports) what to do
        return None

    def _sequence_item(self, item: Dataset, encodings: list[str]) -> bytes:
        body = self.dataset(item, encodings)
        if getattr(item, "is_undefined_length_sequence_item", False):
            return self._item + self._ul.pack(_UNDEFINED) + body + self._item_end
        return self._item + self._ul.pack(len(body)) + body

    def _frame(self, tag: int, vr: str | None, value: bytes, undefined: bool) -> bytes | None:
        """Tag, VR (explicit), length and value, as ``write_data_element`` frames them."""
        head = self._tag.pack(tag >> 16, tag & 0xFFFF)
        length = _UNDEFINED if undefined else len(value)
        if not self.enc.implicit:
            assert vr is not None
            long = vr in _LONG
            if not long and not undefined and length > 0xFFFF:
                return None  # pydicom writes it as UN (and warns)
            head += vr.encode("ascii") + (b"\0\0" if long else b"")
            head += self._ul.pack(length) if long or undefined else self._us.pack(length)
        else:
            head += self._ul.pack(length)
        return head + value + self._sequence_end if undefined else head + value

    def _pydicom(self, elem: DataElement | RawDataElement, encodings: list[str]) -> bytes:
        out = DicomBytesIO()
        out.is_implicit_VR, out.is_little_endian = self.enc.implicit, self.enc.little
        write_data_element(out, elem, encodings)
        return bytes(out.getvalue())
