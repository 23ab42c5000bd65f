"""The tolerant date/time reader: the standard grammar, the real variants it reads, what it refuses.

Variants come from the shared corpus (HAPI's 1994 sample MSH-7 ``1994050216163360``,
python-orthanc-tools' ``2017-04-25 07:31:13.123456``) and from public issue threads
(hl7-parser #23 ``20190916143134920350``, FHIR-Converter #481 ``20180703212010+00``,
Mirth's ``Aug 15, 1942``, python-hl7's ``196203520``).
"""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import HL7ApplicationError
from engine.hl7.dtm import Timestamp, read_dtm


@pytest.mark.parametrize(
    ("text", "digits", "fraction", "offset"),
    [
        ("2026", "2026", "", ""),
        ("202612", "202612", "", ""),
        ("20261205", "20261205", "", ""),
        ("2026120512", "2026120512", "", ""),
        ("202612051230", "202612051230", "", ""),
        ("202612051230-0800", "202612051230", "", "-0800"),
        ("20261205123045", "20261205123045", "", ""),
        ("20261205123045.1", "20261205123045", "1", ""),
        ("20261205123045.1234+0215", "20261205123045", "1234", "+0215"),
        ("20230211140114.0000+0800", "20230211140114", "0000", "+0800"),
        ("19700101-0000", "19700101", "", "-0000"),
    ],
)
def test_the_standard_grammar_is_read_with_nothing_tolerated(text, digits, fraction, offset):
    reading = read_dtm(text)
    assert reading.value == Timestamp(digits, fraction, offset)
    assert reading.tolerated == ()
    assert reading.value.standard == text


@pytest.mark.parametrize(
    ("text", "standard", "tolerated"),
    [
        ("20261205123045123", "20261205123045.123", ["fraction without '.'"]),
        ("1994050216163360", "19940502161633.60", ["fraction without '.'"]),
        ("20190916143134920350", "20190916143134.9203", ["fraction without '.'"]),
        ("20261205123045.123456", "20261205123045.1234", ["fraction of 6 digits"]),
        ("20261205123045 ", "20261205123045", ["spaces around the value"]),
        (" 19620320", "19620320", ["spaces around the value"]),
        ("202612051230+01", "202612051230+0100", ["offset without minutes"]),
        ("20180703212010+00", "20180703212010+0000", ["offset without minutes"]),
        ("202612051230+01:00", "202612051230+0100", ["':' in the offset"]),
        ("20261205123045Z", "20261205123045+0000", ["'Z' for +0000"]),
        ("20261205123045 UTC", "20261205123045+0000", ["a space before the offset", "'UTC' for +0000"]),
        ("20261205123045 +0100", "20261205123045+0100", ["a space before the offset"]),
        ("2017-04-25 07:31:13.123456", "20170425073113.1234", ["ISO 8601 form", "fraction of 6 digits"]),
        ("2017-04-25T07:31:13+01:00", "20170425073113+0100", ["ISO 8601 form", "':' in the offset"]),
        ("2017-04-25", "20170425", ["ISO 8601 form"]),
        ("2017-04-25 07:31", "201704250731", ["ISO 8601 form"]),
        ("20261205T123045", "20261205123045", ["'T' between date and time"]),
        ("20261205123045,5", "20261205123045.5", ["',' as decimal sign"]),
        ("20261205123045123-0500", "20261205123045.123-0500", ["fraction without '.'"]),
    ],
)
def test_unambiguous_variants_are_read_and_say_what_was_tolerated(text, standard, tolerated):
    reading = read_dtm(text)
    assert reading.value.standard == standard
    assert list(reading.tolerated) == tolerated


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("196203520", "9 digit(s)"),
        ("2026120512304", "13 digit(s)"),
        ("0", "1 digit(s)"),
        ("Aug 15, 1942", "form"),
        ("08/05/1942", "form"),
        ("05.08.1942", "form"),
        ("20260230", "is not a valid date/time"),
        ("20261301", "is not a valid date/time"),
        ("00000000", "is not a valid date/time"),
        ("20261205240000", "is not a valid date/time"),
        ("20261205123060", "is not a valid date/time"),
        ("202612051230.5", "needs the seconds"),
        ("2017-04-25 07:31.5", "needs the seconds"),
        ("20261205123045+1500", "out of range"),
        ("20261205123045+0160", "out of range"),
        ("20261205123045+1", "not +/-HHMM"),
        ("20261205123045.1234567890", "10 digits"),
        ("2026120512304512345678901", "25 digit(s)"),
        ("2026120T1230", "not YYYYMMDD"),
        ("", "blank"),
        ("   ", "blank"),
        ("20261205123045 EST", "form"),
        ("2" * 41, "longer than 40"),
    ],
)
def test_what_cannot_be_read_one_way_is_refused_with_the_reason(text, reason):
    with pytest.raises(HL7ApplicationError) as exc:
        read_dtm(text)
    assert exc.value.code == 102
    assert reason in exc.value.text


def test_the_note_shows_what_was_written_what_was_read_and_why():
    reading = read_dtm("20261205123045123")
    assert reading.note("MSH-7", "20261205123045123") == (
        "MSH-7 '20261205123045123' read as 2026-12-05T12:30:45.123 (fraction without '.')"
    )


def test_moment_is_naive_without_offset_and_aware_with_one():
    assert read_dtm("20261205123045.5").value.moment() == datetime(2026, 12, 5, 12, 30, 45, 500000)
    aware = read_dtm("202612051230-0130").value.moment()
    assert aware == datetime(2026, 12, 5, 14, 0, tzinfo=UTC)
    assert aware.utcoffset() == -timedelta(hours=1, minutes=30)


def test_moment_of_a_partial_value_is_its_first_instant():
    assert read_dtm("202612").value.moment() == datetime(2026, 12, 1)


# Property tests: whatever the engine would write in the standard grammar reads back as
# itself; every variant of it reads to the same value; nothing else escapes as a crash.

_moments = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))
_offsets = st.one_of(st.just(""), st.builds(lambda m: f"{'+' if m >= 0 else '-'}{abs(m) // 60:02d}{abs(m) % 60:02d}",
                                            st.integers(-12 * 60, 14 * 60)))


@st.composite
def standard_values(draw, precisions=(4, 6, 8, 10, 12, 14), fraction=None):
    moment = draw(_moments)
    precision = draw(st.sampled_from(precisions))
    digits = f"{moment.year:04d}{moment:%m%d%H%M%S}"[:precision]
    with_fraction = draw(st.booleans()) if fraction is None else fraction
    fraction = draw(st.text("0123456789", min_size=1, max_size=4)) if precision == 14 and with_fraction else ""
    return Timestamp(digits, fraction, draw(_offsets))


@given(standard_values())
def test_every_standard_value_reads_back_as_itself(stamp):
    reading = read_dtm(stamp.standard)
    assert reading.value == stamp
    assert reading.tolerated == ()


@given(standard_values(), st.sampled_from([" ", "  ", "\t"]))
def test_spaces_around_a_standard_value_change_nothing_but_the_note(stamp, space):
    reading = read_dtm(f"{space}{stamp.standard}{space}")
    assert reading.value == stamp
    assert reading.tolerated == ("spaces around the value",)


@given(standard_values(precisions=(14,), fraction=True))
def test_a_fraction_without_its_point_is_the_same_value(stamp):
    reading = read_dtm(f"{stamp.digits}{stamp.fraction}{stamp.offset}")
    assert reading.value == stamp
    assert reading.tolerated == ("fraction without '.'",)


@given(standard_values(precisions=(8, 12, 14)))
def test_the_iso_form_of_a_value_reads_as_the_value(stamp):
    assert read_dtm(stamp.iso()).value == stamp


@given(st.text(alphabet="0123456789+-.:, TZUCGMa/", max_size=30))
def test_any_text_is_read_or_refused_with_102_never_a_crash(text):
    try:
        reading = read_dtm(text)
    except HL7ApplicationError as exc:
        assert exc.code == 102
    else:
        assert isinstance(reading.value.moment(), datetime)
        assert read_dtm(reading.value.standard).tolerated == ()


@given(st.text("0123456789", min_size=1, max_size=13).filter(lambda t: len(t) % 2 == 1))
def test_an_odd_number_of_digits_is_always_refused(text):
    with pytest.raises(HL7ApplicationError):
        read_dtm(text)


def test_offsets_come_back_as_fixed_zones():
    moment = read_dtm("20261205123045+0530").value.moment()
    assert moment.tzinfo == timezone(timedelta(hours=5, minutes=30))
