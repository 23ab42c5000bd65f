"""Fuzzing the receive path's pure half: no input may raise, every outcome decides an ACK."""

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.channel.prepare import ERROR, FILTERED, PROCESSED, REJECTED, Preparer
from engine.config.models import ChannelConfig
from engine.hl7.ack import AckContext, build_ack
from engine.hl7.batch import BatchError, split_messages
from engine.hl7.charset import decode

CFG = ChannelConfig.model_validate({"name": "f", "source": {"type": "mllp", "port": 0}})
PREPARER = Preparer(CFG)
SEGMENT = st.sampled_from(["MSH", "PID", "ORC", "OBR", "BHS", "BTS", "MSA", "EVN", "ZDS", "A0K", "msh", ""])
FIELD = st.text(alphabet="|^~\\&ABC019.-+ \x00\u00e9", max_size=12)
HEADER = "MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5\r"


def check(text: str) -> None:
    try:
        parts = split_messages(text).messages
    except BatchError:
        return
    for part in parts:
        prepared = PREPARER.prepare(part, part.encode("utf-8", "surrogatepass"), "utf-8")
        assert prepared.status in (PROCESSED, FILTERED, ERROR, REJECTED)
        assert (prepared.error is None) == (prepared.status in (PROCESSED, FILTERED))
        code = prepared.error.ack_code if prepared.error else "AA"
        ack = build_ack(prepared.message, code, AckContext("X", __import__("datetime").datetime.now()), prepared.error)
        assert ack.startswith("MSH") and f"\rMSA{ack[3]}{code}{ack[3]}" in ack


@settings(max_examples=400)
@given(st.lists(st.tuples(SEGMENT, st.lists(FIELD, max_size=8)), max_size=8), st.booleans())
def test_structured_garbage_never_raises(segments, with_header):
    body = "\r".join(name + "|" + "|".join(fields) for name, fields in segments)
    check((HEADER if with_header else "") + body)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data):
    check(decode(data).text)


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_mutated_header_never_raises(tail):
    check(HEADER[: len(tail) % len(HEADER)] + tail)
