from hypothesis import given
from hypothesis import strategies as st

from engine.hl7.framing import FrameDecoder, FrameKind, frame

payloads = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))


def messages_of(events):
    return [e.payload for e in events if e.kind is FrameKind.MESSAGE]


def test_one_frame_yields_its_payload():
    assert messages_of(FrameDecoder(1000).feed(frame(b"MSH|x"))) == [b"MSH|x"]


def test_missing_carriage_return_after_end_block_is_tolerated():
    decoder = FrameDecoder(1000)
    events = decoder.feed(b"\x0bA\x1c\x0bB\x1c\r")
    assert messages_of(events) == [b"A", b"B"]


def test_bytes_outside_a_frame_are_reported_as_junk():
    events = FrameDecoder(1000).feed(b"garbage\x0bA\x1c\r")
    assert [e.kind for e in events] == [FrameKind.JUNK, FrameKind.MESSAGE]
    assert events[0].payload == b"garbage"


def test_blank_bytes_between_frames_are_not_junk():
    events = FrameDecoder(1000).feed(b"\r\n \x0bA\x1c\r\n")
    assert [e.kind for e in events] == [FrameKind.MESSAGE]


def test_frame_over_the_limit_is_reported_oversize_and_truncated():
    events = FrameDecoder(4).feed(frame(b"123456789"))
    assert events[0].kind is FrameKind.OVERSIZE
    assert events[0].payload == b"1234"


def test_decoder_recovers_after_an_oversize_frame():
    decoder = FrameDecoder(4)
    events = decoder.feed(frame(b"123456789") + frame(b"ok"))
    assert [e.kind for e in events] == [FrameKind.OVERSIZE, FrameKind.MESSAGE]


def test_unfinished_frame_is_kept_as_partial():
    decoder = FrameDecoder(100)
    assert decoder.feed(b"\x0bMSH|half") == []
    assert decoder.partial == b"MSH|half"


@given(st.lists(payloads, max_size=8), st.integers(min_value=1, max_value=50))
def test_any_chunking_yields_the_same_messages(items, chunk):
    stream = b"".join(frame(p) for p in items)
    decoder = FrameDecoder(10_000)
    got = []
    for i in range(0, len(stream), chunk):
        got += messages_of(decoder.feed(stream[i : i + chunk]))
    assert got == items


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data):
    decoder = FrameDecoder(256)
    for event in decoder.feed(data) + decoder.close():
        assert len(event.payload) <= 256
