import pytest

from engine.errors import HL7Error
from engine.hl7.er7 import Message
from engine.hl7.validate import AcceptPolicy, validate

BASE = "MSH|^~\\&|RIS|H|RB|R|20261122083000||{type}|{cid}|{pid}|{ver}\rPID|1||MRN1^^^H||DOE^JANE||{dob}|F\r"


def check(policy=None, **kw):
    values = {"type": "ADT^A08^ADT_A01", "cid": "C1", "pid": "P", "ver": "2.5.1", "dob": "19700101"}
    values.update(kw)
    validate(Message(BASE.format(**values)), policy or AcceptPolicy())


def error_of(policy=None, **kw) -> HL7Error:
    with pytest.raises(HL7Error) as exc:
        check(policy, **kw)
    return exc.value


def test_valid_message_passes():
    check()


@pytest.mark.parametrize(
    ("kw", "ack", "code", "where"),
    [
        ({"pid": "X"}, "AR", 202, "MSH^1^11"),
        ({"ver": "3.0"}, "AR", 203, "MSH^1^12"),
        ({"ver": ""}, "AR", 203, "MSH^1^12"),
        ({"cid": ""}, "AE", 101, "MSH^1^10"),
        ({"dob": "196203520"}, "AE", 102, "PID^1^7^1"),
        ({"dob": "19701301"}, "AE", 102, "PID^1^7^1"),
        ({"dob": "Aug 15, 1942"}, "AE", 102, "PID^1^7^1"),
    ],
)
def test_errors_carry_ack_code_table_0357_code_and_location(kw, ack, code, where):
    err = error_of(**kw)
    assert (err.ack_code, err.code, str(err.location)) == (ack, code, where)


def test_unaccepted_type_is_200_and_unaccepted_event_is_201():
    policy = AcceptPolicy(message_types=["ADT^A01", "ORM^O01"])
    assert error_of(policy, type="SIU^S12").code == 200
    assert error_of(policy, type="ADT^A08").code == 201


def test_an_unaccepted_type_or_event_names_what_the_channel_accepts():
    """An order sent to the reports port: the ACK says what that port takes."""
    policy = AcceptPolicy(message_types=["ORU^R01"])
    assert error_of(policy, type="ORM^O01").text == "unsupported message type 'ORM' (accepted here: ORU^R01)"
    assert error_of(policy, type="ORU^R03").text == "unsupported event code 'R03' for ORU (accepted here: ORU^R01)"


def test_version_with_trailing_zero_is_accepted():
    check(ver="2.5.0")


def test_timestamps_with_offset_and_fractions_are_valid():
    check(dob="19700101120000.1234+0100")


def test_missing_msh_is_rejected():
    with pytest.raises(HL7Error) as exc:
        validate(Message("PID|1||X\r"), AcceptPolicy())
    assert exc.value.ack_code == "AR"


@pytest.mark.parametrize("enc", ["^", "^~\\", "^~\\\\&", "^~^&", "a~\\&"])
def test_bad_encoding_characters_are_rejected(enc):
    with pytest.raises(HL7Error) as exc:
        validate(Message(f"MSH|{enc}|A|B|C|D|2026||ADT^A01|1|P|2.5\r"), AcceptPolicy())
    assert str(exc.value.location) == "MSH^1^2"


def test_invalid_segment_id_is_a_segment_sequence_error():
    text = BASE.format(type="ADT^A08", cid="1", pid="P", ver="2.5", dob="") + "A0KJSV|x\r"
    with pytest.raises(HL7Error) as exc:
        validate(Message(text), AcceptPolicy())
    assert exc.value.code == 100


def test_acknowledgment_segment_inside_an_order_is_rejected():
    text = BASE.format(type="ORU^R01", cid="1", pid="P", ver="2.2", dob="") + "MSA|AA|X\r"
    with pytest.raises(HL7Error) as exc:
        validate(Message(text), AcceptPolicy())
    assert str(exc.value.location) == "MSA^1"


def test_segments_unknown_to_the_version_are_allowed():
    text = BASE.format(type="ORU^R01", cid="1", pid="P", ver="2.5.1", dob="") + "PRT|1\rZDS|1.2.3\r"
    validate(Message(text), AcceptPolicy())


def test_datatypes_none_skips_field_checks():
    check(AcceptPolicy(datatypes="none"), dob="garbage")


# Timestamps outside the standard grammar: lenient (default) reads and notes them, strict refuses.

HEADER = "MSH|^~\\&|RIS|H|RB|R|{msh7}||ORM^O01^ORM_O01|C1|P|{ver}\r"
ORDER = (
    "EVN|O01|{evn2}\r"
    "PID|1||MRN1^^^H||DOE^JANE||{dob}|F\r"
    "ORC|NW|P1|||||^^^{orc74}||{orc9}\r"
)
STRICT = AcceptPolicy(timestamps="strict")


def order(ver="2.3", msh7="20261205123045", evn2="20261205123045", dob="19620320", orc74="", orc9=""):
    return Message(HEADER.format(msh7=msh7, ver=ver) + ORDER.format(evn2=evn2, dob=dob, orc74=orc74, orc9=orc9))


def test_a_standard_message_has_no_notes():
    assert validate(order(), AcceptPolicy()) == []


@pytest.mark.parametrize("msh7", ["20261205123045123", "20261205123045 ", "2026-12-05 12:30:45", "202612051230+01"])
def test_a_readable_nonstandard_msh7_is_accepted_with_a_note(msh7):
    notes = validate(order(msh7=msh7), AcceptPolicy())
    assert len(notes) == 1
    assert notes[0].startswith(f"MSH-7 {msh7!r} read as 2026-12-05T12:30")


def test_the_note_names_the_value_the_reading_and_the_tolerance():
    notes = validate(order(msh7="20261205123045123"), AcceptPolicy())
    assert notes == ["MSH-7 '20261205123045123' read as 2026-12-05T12:30:45.123 (fraction without '.')"]


@pytest.mark.parametrize(("field", "kw"), [("MSH-7", {"msh7": "Dec 5 2026"}), ("EVN-2", {"evn2": "0"}),
                                           ("ORC-9", {"orc9": "05/12/2026 12:30"})])
def test_an_unreadable_informational_timestamp_is_only_a_note(field, kw):
    notes = validate(order(**kw), AcceptPolicy())
    assert len(notes) == 1
    assert notes[0].startswith(f"{field} ") and notes[0].endswith("ignored, the field is informational")


@pytest.mark.parametrize(("kw", "where"), [
    ({"msh7": "20261205123045123"}, "MSH^1^7^1"),
    ({"evn2": "20261205123045 "}, "EVN^1^2^1"),
    ({"dob": "1962-03-20"}, "PID^1^7^1"),
    ({"orc74": "202612051230+01:00"}, "ORC^1^7^4"),
])
def test_a_strict_channel_refuses_every_nonstandard_timestamp(kw, where):
    with pytest.raises(HL7Error) as exc:
        validate(order(**kw), STRICT)
    assert (exc.value.ack_code, exc.value.code, str(exc.value.location)) == ("AE", 102, where)


def test_a_strict_channel_accepts_the_standard_grammar():
    assert validate(order(msh7="20261205123045.1234+0100", orc74="202612051230"), STRICT) == []


def test_a_readable_birth_date_is_used_and_noted():
    notes = validate(order(dob="19620320000000 "), AcceptPolicy())
    assert notes == ["PID-7 '19620320000000 ' read as 1962-03-20T00:00:00 (spaces around the value)"]


@pytest.mark.parametrize(("kw", "where"), [({"dob": "196203520"}, "PID^1^7^1"), ({"dob": "Aug 15, 1942"}, "PID^1^7^1"),
                                           ({"orc74": "12/05/2026"}, "ORC^1^7^4")])
def test_an_unreadable_timestamp_the_engine_uses_is_ae_102_with_the_reason(kw, where):
    with pytest.raises(HL7Error) as exc:
        validate(order(**kw), AcceptPolicy())
    assert (exc.value.code, str(exc.value.location)) == (102, where)
    assert "cannot be read as a date/time" in exc.value.text


def test_the_scheduled_start_in_orc_7_4_is_read_and_noted():
    notes = validate(order(orc74="20261206083000000"), AcceptPolicy())
    assert notes == ["ORC-7.4 '20261206083000000' read as 2026-12-06T08:30:00.000 (fraction without '.')"]


def test_a_second_segment_is_named_with_its_sequence():
    text = order(orc74="").text + "ORC|NW|P2|||||^^^20261206083000Z\r"
    notes = validate(Message(text), AcceptPolicy())
    assert notes == ["ORC(2)-7.4 '20261206083000Z' read as 2026-12-06T08:30:00+00:00 ('Z' for +0000)"]


def test_several_tolerances_give_one_note_each():
    notes = validate(order(msh7="20261205123045123", evn2="2026-12-05 12:30", dob=" 19620320"), AcceptPolicy())
    assert [n.split(" ", 1)[0] for n in notes] == ["MSH-7", "EVN-2", "PID-7"]


def test_datatypes_none_reads_no_timestamps():
    assert validate(order(msh7="garbage", dob="garbage"), AcceptPolicy(datatypes="none")) == []


def test_the_corpus_msh7_of_hapis_1994_sample_is_read_as_hundredths():
    notes = validate(order(msh7="1994050216163360", ver="2.2"), AcceptPolicy())
    assert notes == ["MSH-7 '1994050216163360' read as 1994-05-02T16:16:33.60 (fraction without '.')"]


@pytest.mark.parametrize("evn2", ["20190924143134^YYYYMMDDHHMMSS", "20230211140114.0000+0800",
                                  "20250204141403.403+0100"])
def test_public_feed_timestamps_in_the_grammar_need_no_note(evn2):
    # hl7-parser #23 (TS with its degree of precision), nHapi #411 (Mindray), hl7-parser #31.
    assert validate(order(ver="2.5", evn2=evn2), AcceptPolicy()) == []


def test_the_public_feed_fraction_without_point_in_pv1_style_20_digits_is_read():
    # hl7-parser #23: PV1-45 "20190916143134920350"; the same form in EVN-2.
    notes = validate(order(evn2="20190916143134920350"), AcceptPolicy())
    assert notes == ["EVN-2 '20190916143134920350' read as 2019-09-16T14:31:34.920350 (fraction without '.')"]


def test_with_all_datatypes_a_time_in_a_date_field_is_read_and_noted():
    text = order(ver="2.5.1").text + "AL1|1||^PENICILLIN|||20200101120000\r"
    notes = validate(Message(text), AcceptPolicy(datatypes="all"))
    assert notes == ["AL1-6 '20200101120000' read as 2020-01-01T12:00:00 (a time in a date (DT) field)"]


def test_with_all_datatypes_an_unreadable_date_field_is_ae_102():
    text = order(ver="2.5.1").text + "AL1|1||^PENICILLIN|||2020/01/01\r"
    with pytest.raises(HL7Error) as exc:
        validate(Message(text), AcceptPolicy(datatypes="all"))
    assert (exc.value.code, str(exc.value.location)) == (102, "AL1^1^6")
