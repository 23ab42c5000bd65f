"""InstanceAttributes read from values still as received (not decoded by pydicom) are exactly pydicom's.

The receive path reads the ~17 indexed attributes from the raw element bytes when a value is one
plain ASCII value (``engine.domain.instances._plain``); anything else goes through pydicom's
value conversion as before. Each generated header is read both ways: raw, and after pydicom
decoded every value (which takes the pydicom path).
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import astuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from engine.domain import instances
from engine.domain.instances import InstanceAttributes

KEYWORDS = list(instances._INDEXED)
#: Bytes a modality may send: plain ASCII, padding, a value delimiter, non-ASCII, control characters.
ALPHABET = b"AZaz09^=.- +\x00\\\xe9\t~["
CHARSETS = [None, b"", b"ISO_IR 100", b"ISO_IR 192 ", b"ISO_IR 6", b"ISO 2022 IR 87", b"\\ISO 2022 IR 100", b"GB18030"]


def _raw(tag: int, vr: str | None, value: bytes, implicit: bool) -> RawDataElement:
    return RawDataElement(Tag(tag), None if implicit else vr, len(value), value, 0, implicit, True, True, False)


values = st.one_of(
    st.binary(max_size=12).map(lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b)),
    st.sampled_from([b"1.2.840.10008.5.1.4.1.1.2\x00", b" 107", b"+5 ", b"007", b"1.0", b"1A", b"-3", b"0", b"-00 ",
                     b"DOE^JOHN ", b"Y\xe9^A", b"A\\B", b"  ", b"\x00", b"20261206", b"120000.5 "]),
)


# Generated values are invalid on purpose; pydicom warns about each one it decodes.
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=int(os.environ.get("RB_EXAMPLES", "400")), deadline=None)
@given(st.dictionaries(st.sampled_from(KEYWORDS), st.tuples(values, st.sampled_from([None, "UN", "SH", "LO"])),
                       max_size=len(KEYWORDS)),
       st.sampled_from(CHARSETS), st.booleans())
@example({"PatientName": (b"=", None)}, None, False)  # pydicom drops empty PN component groups: "=" reads as ""
@example({"PatientName": (b"DOE^J==", None)}, None, True)
def test_read_raw_as_pydicom_reads_it(elements: dict[str, tuple[bytes, str | None]], charset: bytes | None,
                                      implicit: bool) -> None:
    def header() -> Dataset:
        ds = Dataset()
        if charset is not None:
            ds[0x00080005] = _raw(0x00080005, "CS", charset, implicit)
        for keyword, (value, other_vr) in elements.items():
            tag = Tag(keyword)
            ds[tag] = _raw(tag, other_vr or dictionary_VR(tag), value, implicit)
        return ds

    decoded = header()
    for keyword in KEYWORDS:  # pydicom decodes every value: from_dataset then takes pydicom's path
        with contextlib.suppress(Exception):  # left raw: from_dataset's pydicom path gives "" as before
            decoded.get(keyword)
    assert astuple(InstanceAttributes.from_dataset(header())) == astuple(InstanceAttributes.from_dataset(decoded))


def test_a_plain_value_is_read_without_decoding_the_element() -> None:
    ds = Dataset()
    ds[0x00100020] = _raw(0x00100020, "LO", b"PID1 ", False)
    ds[0x00200013] = _raw(0x00200013, "IS", b" 107", False)
    ds[0x00200011] = _raw(0x00200011, "IS", b"0 ", False)  # pydicom's IS 0 is falsy: indexed empty, as always
    attrs = InstanceAttributes.from_dataset(ds)
    assert (attrs.patient_id, attrs.instance_number, attrs.series_number) == ("PID1", 107, None)
    assert all(isinstance(ds.get_item(tag), RawDataElement) for tag in (0x00100020, 0x00200013))


def test_each_field_is_read_from_the_attribute_field_keywords_names_and_no_other() -> None:
    base = Dataset()
    for keyword, _ in instances.FIELDS.values():
        setattr(base, keyword, "1")
    before = InstanceAttributes.from_dataset(base)
    assert list(instances.FIELDS) == list(InstanceAttributes.__dataclass_fields__)
    for name, (keyword, _) in instances.FIELDS.items():
        other = copy.deepcopy(base)
        setattr(other, keyword, "2")
        after = InstanceAttributes.from_dataset(other)
        differs = {f for f in instances.FIELDS if getattr(after, f) != getattr(before, f)}
        assert differs == {name}, keyword
        assert after.values_at({Tag(keyword)}) == {name: getattr(after, name)}
