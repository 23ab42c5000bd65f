import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.hl7.er7 import Message, Separators, escape, normalize_segment_breaks, unescape

ORM = (
    "MSH|^~\\&|RIS|HOSP|RB|RAD|20261122083000||ORM^O01^ORM_O01|C1|P|2.5.1||||||8859/1\r"
    "PID|1||MRN1^^^HOSP^MR~X9^^^OTHER||DOE^JANE^Q^^DR||19700101|F\r"
    "ORC|NW|P1|F1||SC\r"
    "OBR|1|P1|F1|CT1^CT HEAD^L||||||||||||||ACC1|RP1|SPS1||||CT\r"
    "ORC|NW|P2|F2||SC\r"
    "OBR|2|P2|F2|MR1^MR KNEE^L||||||||||||||ACC2|RP2|SPS2||||MR\r"
)


def test_msh_fields_follow_standard_numbering():
    m = Message(ORM)
    assert m.msh is not None
    assert m.msh.field(1) == "|"
    assert m.msh.field(2) == "^~\\&"
    assert (m.sending_application, m.control_id, m.version, m.charset) == ("RIS", "C1", "2.5.1", "8859/1")
    assert m.message_type == "ORM^O01" and m.message_structure == "ORM_O01"


def test_components_repetitions_and_occurrences():
    m = Message(ORM)
    pid = m.segment("PID")
    assert pid is not None
    assert pid.value(3, 2, 1) == "X9"
    assert pid.value(3, 1, 4) == "HOSP"
    assert m.segment("OBR", 2).value(18) == "ACC2"
    assert m.segment("OBR", 3) is None
    assert len(m.all("ORC")) == 2


def test_missing_parts_are_empty_strings():
    m = Message(ORM)
    assert m.value("PID", 99) == ""
    assert m.value("PID", 5, 1, 9) == ""
    assert m.value("ZZZ", 1) == ""


def test_lf_and_crlf_segment_terminators_are_normalized():
    assert normalize_segment_breaks("MSH|A\r\nPID|B\nPV1|C\rOBX|D\n\rNTE|E") == "MSH|A\rPID|B\rPV1|C\rOBX|D\rNTE|E"
    assert Message(ORM.replace("\r", "\r\n")).segment("OBR", 2) is not None
    assert Message(ORM.replace("\r", "\n")).segment("OBR", 2) is not None


# Mirth (nextgenhealthcare/connect #650): report text with LF line breaks inside OBX-5.
REPORT = "MSH|^~\\&|RIS|H|EHR|H|20261205||ORU^R01|R1|P|2.3\rOBX|1|TX|||FINDINGS:\nNo acute disease.\nNAD\rNTE|1\r"


@pytest.mark.parametrize("terminator", ["\r", "\r\n", "\n"])
def test_a_lone_lf_that_no_segment_follows_is_a_line_break_inside_the_field(terminator):
    m = Message(REPORT.replace("\r", terminator))
    assert [s.name for s in m.segments] == ["MSH", "OBX", "NTE"]
    assert m.value("OBX", 5) == "FINDINGS:\nNo acute disease.\nNAD"


def test_a_lone_lf_before_a_segment_id_and_the_field_separator_ends_the_segment():
    assert normalize_segment_breaks("MSH#^~\\&#A\rPID#1\nPV1#2\nABC|x") == "MSH#^~\\&#A\rPID#1\rPV1#2\nABC|x"


def test_blank_lines_after_a_lone_lf_are_segment_breaks():
    assert normalize_segment_breaks("MSH|A\n\n  \nPID|B\n") == "MSH|A\r\r  \rPID|B\r"


def test_bom_and_missing_final_cr_are_tolerated():
    m = Message("\ufeff" + ORM.rstrip("\r"))
    assert m.control_id == "C1"
    assert m.text.endswith("\r")


def test_other_encoding_characters_are_honoured():
    m = Message("MSH|^~\\}|A|B|||20200101||ADT^A01|X|P|2.4\rPID|||1^^^AUTH}SUB")
    assert m.seps.subcomponent == "}"
    assert m.segment("PID").value(3, 1, 4, 2) == "SUB"


def test_unescape_resolves_standard_sequences():
    seps = Separators()
    assert unescape("A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\", seps) == "A|B^C&D~E\\"
    assert unescape("\\X41C3\\", seps) == "A\u00c3"
    assert unescape("line\\.br\\next", seps) == "line\nnext"
    assert unescape("no escape", seps) == "no escape"
    assert unescape("\\unterminated", seps) == "\\unterminated"


@pytest.mark.parametrize(("written", "text"), [
    ("a\\.sp\\b", "a\nb"),  # .sp: end the line (skip one)
    ("a\\.sp 2\\b", "a\n\nb"),
    ("a\\.sk 3\\b", "a   b"),  # .sk n: skip n spaces
    ("caf\\XC3A9\\", "caf\u00e9"),  # several bytes: one UTF-8 character
    ("caf\\XE9\\", "caf\u00e9"),  # not UTF-8: one Latin-1 character a byte
    ("\\H\\bold\\N\\ \\.in+4\\x\\.ce\\", "bold x"),  # highlighting and layout dropped
])
def test_unescape_reads_report_text_formatting(written, text):
    """FT report text (HL7 v2.5.1 2.7.6): line and space commands, hex data in the message's sense."""
    assert unescape(written, Separators()) == text


@pytest.mark.parametrize(("written", "text"), [
    ("a\\.sp 1000000000000\\b", "a" + "\n" * 100 + "b"),  # was a MemoryError (or a gigabyte with 9 digits)
    ("a\\.sk 999999999\\b", "a" + " " * 100 + "b"),
    ("a\\.sp \u00b2\\b", "a\nb"),  # isdigit() took '²' and int() raised ValueError: the report was AE
])
def test_a_skip_command_is_bounded_and_takes_only_ascii_digits(written, text):
    """A report line's \\.sp n\\ of a huge n made the engine allocate n line breaks; '²' made the report AE."""
    assert unescape(written, Separators()) == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=50))
def test_escape_then_unescape_round_trips(text):
    seps = Separators()
    escaped = escape(text, seps)
    for ch in "|^&~\r":
        assert ch not in escaped
    assert unescape(escaped, seps) == text.replace("\r", "\r")


@given(st.text(max_size=500))
def test_tokenizing_arbitrary_text_never_raises(text):
    m = Message(text)
    for seg in m.segments:
        seg.value(3, 2, 2, 2)
    _ = (m.control_id, m.message_type, m.version, m.charset)


def test_a_report_line_that_looks_like_a_segment_but_names_none_stays_in_the_field():
    m = Message("MSH|^~\\&|A|B|C|D|2026||ORU^R01|1|P|2.3\rOBX|1|TX|||No acute disease.\nNAD||||||F\r")
    assert [s.name for s in m.segments] == ["MSH", "OBX"]
    assert m.value("OBX", 5) == "No acute disease.\nNAD" and m.value("OBX", 11) == "F"


def test_a_lone_lf_before_a_z_segment_ends_the_segment():
    assert normalize_segment_breaks("MSH|A\rOBX|1|x\nZDS|1.2.3") == "MSH|A\rOBX|1|x\rZDS|1.2.3"


_SEGMENTS = st.lists(st.sampled_from(["PID|1||X", "PV1|1|O", "ORC|NW|P1", "OBR|1|P1", "NTE|1|text", "ZDS|1.2"]),
                     min_size=1, max_size=6)
_TERMINATORS = st.sampled_from(["\r", "\r\n", "\n", "\n\r"])


@given(_SEGMENTS, st.data())
def test_any_mix_of_terminators_between_segments_gives_the_cr_form(segments, data):
    lines = ["MSH|^~\\&|A|B|C|D|2026||ADT^A08|1|P|2.5", *segments]
    text = "".join(line + data.draw(_TERMINATORS) for line in lines)
    assert normalize_segment_breaks(text) == "\r".join(lines) + "\r"


@given(st.lists(st.text(alphabet="abcxyz:. 01", min_size=1, max_size=12), min_size=2, max_size=5), _TERMINATORS)
def test_text_lines_joined_by_lf_inside_a_field_are_kept(report_lines, terminator):
    body = "\n".join(line.strip() or "x" for line in report_lines)
    text = f"MSH|^~\\&|A|B|C|D|2026||ORU^R01|1|P|2.5{terminator}OBX|1|TX|||{body}|F{terminator}"
    assert Message(text).value("OBX", 5) == body


@pytest.mark.parametrize(("msh18", "expected"), [
    ("8859/2", "Małgorzata"),  # \XB3\ is "ł" in ISO 8859-2
    ("CP1250", "Małgorzata"),  # and in Windows-1250, which Polish HIS name in MSH-18
    ("8859/1", "Ma³gorzata"),
    ("", "Ma³gorzata"),  # no MSH-18: Latin-1, as before
])  # fmt: skip
def test_hex_data_is_read_in_the_character_set_msh_18_names(msh18: str, expected: str) -> None:
    message = Message(f"MSH|^~\\&|HIS|H|RB|R|20240520070000||ADT^A08|1|P|2.5||||||{msh18}\r"
                      "PID|1||P1||Kowalska^Ma\\XB3\\gorzata\r")
    assert unescape(message.segments[1].fields[5].split("^")[1], message.seps) == expected


def test_hex_data_that_is_utf8_is_read_as_utf8_whatever_msh_18_says() -> None:
    message = Message("MSH|^~\\&|HIS|H|RB|R|20240520070000||ADT^A08|1|P|2.5||||||8859/2\rPID|1||P1||M\\XC3BC\\ller\r")
    assert unescape(message.segments[1].fields[5], message.seps) == "Müller"
