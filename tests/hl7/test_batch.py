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


# A stray line before MSH cannot belong to the message: a segment follows its MSH.


@pytest.mark.parametrize("junk", ["garbage\r", "ping\n", "PID|||OLD\r", "hello\r\r  \r"])
def test_a_line_before_msh_is_skipped_with_a_note_and_the_message_is_single(junk):
    split = split_messages(junk + M1)
    assert split.messages == [M1] and not split.batch
    assert len(split.notes) == 1 and split.notes[0].startswith("skipped 1 line(s) before MSH")


@pytest.mark.parametrize(("where", "text"), [("before", "\x00\x00\r" + M1), ("after", M1 + "\x00\x00\x00\r"),
                                             ("ctrl-z", M1 + "\x1a"), ("between", M1.replace("\rPID", "\r\x00\rPID"))])
def test_a_line_of_control_characters_only_is_skipped_with_a_note(where, text):
    split = split_messages(text)
    assert split.messages == [M1] and not split.batch
    assert len(split.notes) == 1 and split.notes[0].startswith("skipped 1 line(s) of control characters only")


def test_blank_lines_are_skipped_without_a_note():
    split = split_messages("\r  \r" + M1.replace("\rPID", "\r \t \rPID") + "\r\r")
    assert split.messages == [M1] and split.notes == []


def test_the_note_says_how_many_lines_and_shows_the_first():
    split = split_messages("garbage line\rmore\r" + M1)
    assert split.notes == ["skipped 2 line(s) before MSH, the first: 'garbage line'"]


@pytest.mark.parametrize("prefix", ["  ", "\x00", "\x0b", "\t \x1c"])
def test_spaces_and_control_characters_before_msh_on_its_line_are_skipped(prefix):
    split = split_messages(prefix + M1)
    assert split.messages == [M1] and not split.batch
    assert split.notes == [f"skipped {len(prefix)} character(s) before MSH on its line: {prefix!r}"]


def test_text_glued_before_msh_is_not_a_header():
    split = split_messages("xMSH|^~\\&|A\rPID|||1\r")
    assert split.messages == ["xMSH|^~\\&|A\rPID|||1\r"] and split.notes == []


def test_a_frame_without_any_header_is_left_whole_for_validation():
    split = split_messages("hello\rPID|||1\r")
    assert split.messages == ["hello\rPID|||1\r"] and split.notes == []


def test_a_line_before_a_real_batch_is_skipped_and_the_batch_stays_a_batch():
    split = split_messages("junk\rBHS|^~\\&|A\r" + M1 + M2 + "BTS|2\r")
    assert split.messages == [M1, M2] and split.batch and split.header.startswith("BHS")
    assert split.notes == ["skipped 1 line(s) before BHS, the first: 'junk'"]


def test_a_line_before_a_file_header_is_skipped():
    split = split_messages("junk\rFHS|^~\\&\rBHS|^~\\&\r" + M1 + "BTS|1\rFTS|1\r")
    assert split.messages == [M1] and split.batch


def test_a_segment_name_that_only_starts_like_msh_is_not_a_header():
    split = split_messages("MSHX|1\r" + M1)
    assert split.notes == ["skipped 1 line(s) before MSH, the first: 'MSHX|1'"]


def test_line_feeds_kept_inside_fields_are_noted():
    report = M1.replace("PID|||1", "OBX|1|TX|||line one\nline two\nNAD")
    split = split_messages(report)
    assert split.messages == [report]
    assert split.notes == ["kept 2 line feed(s) inside fields: no segment follows them"]


def test_right_batch_counts_say_nothing():
    assert split_messages("FHS|^~\\&\rBHS|^~\\&\r" + M1 + M2 + "BTS|2\rFTS|1\r").batch_notes == []
    assert split_messages("BHS|^~\\&\r" + M1 + "BTS\r").batch_notes == []  # no count given
    assert split_messages("FHS|^~\\&\r" + M1 + M2 + "FTS|2\r").batch_notes == []  # no BHS: messages counted


def test_a_wrong_bts_count_is_accepted_and_noted():
    split = split_messages("BHS|^~\\&\r" + M1 + M2 + "BTS|3\r")
    assert split.messages == [M1, M2]
    assert split.batch_notes == ["BTS-1 says 3 message(s), the batch holds 2 (accepted as received)"]


def test_a_wrong_fts_count_and_an_unreadable_bts_count_are_noted():
    split = split_messages("FHS|^~\\&\rBHS|^~\\&\r" + M1 + "BTS|one\rBHS|^~\\&\r" + M2 + "BTS|1\rFTS|1\r")
    assert split.messages == [M1, M2]
    assert split.batch_notes == ["BTS-1 'one' is not a message count (the batch holds 1)",
                                 "FTS-1 says 1 batch(es), the file holds 2 (accepted as received)"]


def test_a_count_of_non_ascii_or_very_many_digits_is_noted_not_a_crash():
    """str.isdigit() takes '²' and '٣', int() refuses '²' and a count of more than 4,300 digits (ValueError):
    the whole frame was lost with a traceback instead of being accepted with a note."""
    for count in ("²", "9" * 5000):
        split = split_messages("BHS|^~\\&\r" + M1 + f"BTS|{count}\r")
        assert split.messages == [M1]
        assert split.batch_notes and split.batch_notes[0].startswith("BTS-1 ")
    split = split_messages("FHS|^~\\&\r" + M1 + "FTS|²\r")  # the FTS of a file without BHS, read first
    assert split.messages == [M1] and split.batch_notes
    arabic = split_messages("BHS|^~\\&\r" + M1 + "BTS|\u0661\r")  # Arabic-Indic one: not a count of ours
    assert arabic.batch_notes == ["BTS-1 '\u0661' is not a message count (the batch holds 1)"]
