from hypothesis import given
from hypothesis import strategies as st

from engine.hl7.framing import FrameDecoder, FrameEvent, FrameKind, frame

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


def test_an_unfinished_frame_is_reported_abandoned_at_the_end_of_the_stream():
    decoder = FrameDecoder(100)
    assert decoder.feed(b"\x0bMSH|half") == []
    assert decoder.in_frame and decoder.buffered == 8
    assert decoder.close() == [FrameEvent(FrameKind.ABANDONED, b"MSH|half", 8)]
    assert decoder.close() == [] and not decoder.in_frame and decoder.buffered == 0


def test_of_an_abandoned_frame_only_the_first_keep_bytes_are_reported():
    decoder = FrameDecoder(100, keep_bytes=4)
    decoder.feed(b"\x0bMSH|half")
    assert decoder.close() == [FrameEvent(FrameKind.ABANDONED, b"MSH|", 8)]


def test_an_oversize_frame_holds_only_keep_bytes_while_the_rest_streams_past():
    decoder = FrameDecoder(1000, keep_bytes=10)
    assert decoder.feed(b"\x0b" + b"x" * 900) == []
    assert decoder.buffered == 900  # not oversize yet: the whole frame may still be a message
    for _ in range(100):
        assert decoder.feed(b"y" * 1000) == []
        assert decoder.buffered == 10
    events = decoder.feed(b"z\x1c\r" + frame(b"ok"))
    assert events == [FrameEvent(FrameKind.OVERSIZE, b"x" * 10, 100_901), FrameEvent(FrameKind.MESSAGE, b"ok", 2)]
    assert decoder.buffered == 0


def test_junk_is_held_up_to_keep_bytes():
    decoder = FrameDecoder(1000, keep_bytes=5)
    events = decoder.feed(b"garbage and more garbage\x0b")
    assert events == [FrameEvent(FrameKind.JUNK, b"garba", 24)]



def test_junk_arriving_in_many_reads_is_reported_once_with_its_full_size():
    decoder = FrameDecoder(1000, keep_bytes=8)
    for _ in range(1000):
        assert decoder.feed(b"junk" * 256) == []
    assert decoder.buffered == 8
    assert decoder.close() == [FrameEvent(FrameKind.JUNK, b"junkjunk", 1_024_000)]

@given(st.lists(payloads, max_size=8), st.integers(min_value=1, max_value=50))
def test_any_chunking_yields_the_same_messages(items, chunk):
    stream = b"".join(frame(p) for p in items)
    decoder = FrameDecoder(10_000)
    got = []
    for i in range(0, len(stream), chunk):
        got += messages_of(decoder.feed(stream[i : i + chunk]))
    assert got == items


@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=300))
def test_arbitrary_bytes_never_raise_and_stay_within_the_limits(data, keep):
    decoder = FrameDecoder(256, keep)
    for event in decoder.feed(data) + decoder.close():
        limit = 256 if event.kind is FrameKind.MESSAGE else min(keep, 256)
        assert len(event.payload) <= limit
        assert decoder.buffered <= 256
