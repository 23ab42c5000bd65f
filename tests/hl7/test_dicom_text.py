"""engine.hl7.dicom_text: HL7 text made fit for a DICOM value (delimiters, control characters)."""

from __future__ import annotations

import pytest

from engine.hl7.dicom_text import pn_component, safe_value
from engine.hl7.er7 import Separators, unescape


@pytest.mark.parametrize(("text", "expected"), [
    ("CT HEAD\\NECK", "CT HEAD/NECK"),
    ("CT Thorax\nmit KM", "CT Thorax mit KM"),  # \.br\ unescaped
    ("CT\tHEAD", "CT HEAD"),  # a tab pasted from a spreadsheet
    ("Protokoll\n\n", "Protokoll"),  # \.sp 2\ at the end
    ("\r\nCT HEAD \x7f", "CT HEAD"),
    ("CT HEAD ", "CT HEAD "),  # no control character: left exactly as it was
])  # fmt: skip
def test_a_dicom_value_has_no_backslash_and_no_control_character(text: str, expected: str) -> None:
    assert safe_value(text) == expected


def test_a_line_break_escape_in_a_procedure_description_becomes_a_space() -> None:
    seps = Separators()
    assert safe_value(unescape("CT Thorax\\T\\Abdomen\\.br\\mit KM", seps)) == "CT Thorax&Abdomen mit KM"


@pytest.mark.parametrize(("text", "expected"), [
    ("Smith\\Jones", "Smith Jones"),
    ("Smith\n", "Smith"),
    ("van\tder Berg", "van der Berg"),
])  # fmt: skip
def test_a_person_name_component_has_no_delimiter_and_no_control_character(text: str, expected: str) -> None:
    assert pn_component(text) == expected


def test_c1_control_characters_are_spaces_too() -> None:
    """U+0080-U+009F are no DICOM characters: a CP1252 '…' (0x85) read as Latin-1 is U+0085, NEL."""
    assert safe_value("CT Thorax\x85mit KM") == "CT Thorax mit KM"
    assert pn_component("M\x9aller") == "M ller"
    assert safe_value("Müller ÿ") == "Müller ÿ"  # Latin-1 letters are kept
