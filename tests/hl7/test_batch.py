import pytest

from engine.hl7.batch import BatchError, split_messages

M1 = "MSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.5\rPID|||1\r"
M2 = "MSH|^~\\&|A|B|C|D|20260101||ADT^A04|2|P|2.5\rPID|||2\r"


def test_single_message_is_not_a_batch():
    split = split_messages(M1)
    assert split.messages == [M1] and not split.batch


def test_bhs_bts_batch_is_split():
    split = split_messages("BHS|^~\\&|A\r" + M1 + M2 + "BTS|2\r")
    assert split.messages == [M1, M2] and split.batch and split.header.startswith("BHS")


def test_file_envelope_is_split():
    split = split_messages("FHS|^~\\&\rBHS|^~\\&\r" + M1 + "BTS|1\rFTS|1\r")
    assert split.messages == [M1]


def test_messages_back_to_back_without_envelope_are_a_batch():
    split = split_messages(M1 + M2)
    assert split.messages == [M1, M2] and split.batch


def test_segment_before_first_msh_in_a_batch_is_an_error():
    with pytest.raises(BatchError) as err:
        split_messages("BHS|^~\\&\rEVN|A04\r" + M1 + "BTS|1\r")
    assert str(err.value.location) == "EVN^2"


def test_nested_bhs_is_an_error():
    with pytest.raises(BatchError):
        split_messages("BHS|^~\\&\r" + M1 + "BHS|^~\\&\r" + M2 + "BTS|1\rBTS|1\r")


def test_bts_without_bhs_is_an_error():
    with pytest.raises(BatchError):
        split_messages(M1 + "BTS|1\r")
