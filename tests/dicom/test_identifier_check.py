"""The structure check of encoded identifiers (PS3.5 7.1, 7.5), on bytes built here."""

from __future__ import annotations

import random
import struct

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from channels.dicom.identifier_check import MAX_DEPTH, structure_problem

SPS = (0x0040, 0x0100)


def _query() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.AccessionNumber, ds.PatientName, ds.PatientBirthDate = "", "MÜLLER*", "19700101-19801231"
    item = Dataset()
    item.Modality, item.ScheduledStationAETitle = "CT", "CT1"
    code = Dataset()
    code.CodeValue = ""
    item.ScheduledProtocolCodeSequence = [code]
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def _implicit(group: int, element: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHI", group, element, len(value) if length is None else length) + value


def _undefined_length_query() -> bytes:
    """AccessionNumber, then an SPS sequence of undefined length with one undefined-length item."""
    item = _implicit(0x0008, 0x0060, b"CT") + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return _implicit(0x0008, 0x0050, b"") + _implicit(*SPS, sequence, 0xFFFFFFFF)


@pytest.mark.parametrize("implicit_vr", [True, False], ids=["implicit VR", "explicit VR"])
def test_identifiers_pydicom_encodes_are_well_formed(implicit_vr: bool) -> None:
    data = encode(_query(), implicit_vr, True)
    assert data is not None and structure_problem(data, implicit_vr) is None


def test_undefined_lengths_with_their_delimiters_are_well_formed() -> None:
    assert structure_problem(_undefined_length_query(), True) is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (_implicit(0x0010, 0x0010, b"DOE^") + _implicit(0x0008, 0x0050, b""), "out of ascending order"),
        (_implicit(0x0000, 0x0900, b"\0\0"), "cannot be in a data set"),
        (_implicit(0x0010, 0x0010, b"DOE^", 40), "runs past the end"),
        (_implicit(0x0010, 0x0010, b"DOE^")[:6], "element header past the end"),
        (_implicit(0x0010, 0x0010, b"", 0xFFFFFFFF), "undefined length but is not a sequence"),
        (_undefined_length_query()[:-8], "sequence without its delimiter"),
        (_implicit(*SPS, _implicit(0x0008, 0x0060, b"CT")), "is not an item"),
        (_implicit(0x0008, 0x0050, b"") + b"\x00\x00", "element header past the end"),
    ],
    ids=["order", "command group", "value past the end", "short header", "undefined length",
         "no sequence delimiter", "sequence without items", "trailing bytes"],
)  # fmt: skip
def test_malformed_encodings_are_named(data: bytes, problem: str) -> None:
    found = structure_problem(data, True)
    assert found is not None and problem in found


def test_explicit_vr_must_be_a_vr() -> None:
    data = struct.pack("<HH2sH", 0x0010, 0x0010, b"ZZ", 4) + b"DOE^"
    assert "no valid VR" in (structure_problem(data, False) or "")


def test_nesting_is_bounded() -> None:
    data = _implicit(0x0008, 0x0060, b"CT")
    for _ in range(MAX_DEPTH + 2):
        data = _implicit(*SPS, _implicit(0xFFFE, 0xE000, data))
    assert structure_problem(data, True) == "sequences nested too deep"


def test_random_bytes_are_refused() -> None:
    rng = random.Random(5)
    assert all(structure_problem(rng.randbytes(rng.randrange(8, 400)), True) for _ in range(500))
