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
