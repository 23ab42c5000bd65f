"""A tolerant reader in the channel: what real senders emit is stored, answered once and noted.

Timestamps outside the HL7 grammar (lenient by default, AE 102 when a channel is strict) and
a stray line before MSH (one ACK for the one message, not a batch reply) — on each backend.
"""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine.channel.persist import Persister
from engine.channel.prepare import Preparer
from engine.channel.runner import ChannelRunner
from engine.cli.queries import message_detail
from engine.config.models import ChannelConfig
from engine.hl7.er7 import Message
from engine.store.schema import messages

ORM = ("MSH|^~\\&|RIS|HOSP|RB|RAD|{msh7}||ORM^O01|{cid}|P|2.3\r"
       "PID|1||MRN1^^^HOSP||DOE^JANE||{dob}|F\rORC|NW|P1\rOBR|1|P1||CT^CT HEAD" + "|" * 14 + "ACC1\r")


def orm(cid="C1", msh7="20261205123045", dob="19700101") -> bytes:
    return ORM.format(cid=cid, msh7=msh7, dob=dob).encode()


def runner(db, filter=None, **accept):
    cfg = ChannelConfig.model_validate({"name": "c", "source": {"type": "mllp", "port": 0}, "accept": accept,
                                        "filter": filter or {}})
    return ChannelRunner(cfg, Preparer(cfg), Persister(cfg, [], "RB", "RAD"), db)


def send(r, payload: bytes) -> Message:
    return Message(asyncio.run(r.receive(payload, "test")).decode("latin-1"))


def stored(db):
    query = select(messages.c.id, messages.c.status, messages.c.ack_code, messages.c.note, messages.c.raw)
    return db.read(lambda c: c.execute(query.order_by(messages.c.id)).all())


def test_a_fraction_without_its_point_in_msh7_is_aa_and_noted(db):
    ack = send(runner(db), orm(msh7="20261205123045123"))
    assert ack.segment("MSA").value(1) == "AA"
    [row] = stored(db)
    assert (row.status, row.ack_code) == ("PROCESSED", "AA")
    assert row.note.splitlines() == ["MSH-7 '20261205123045123' read as 2026-12-05T12:30:45.123 (fraction without '.')"]


def test_an_unreadable_msh7_is_aa_and_noted_as_ignored(db):
    ack = send(runner(db), orm(msh7="Sat Dec 5 12:30"))
    assert ack.segment("MSA").value(1) == "AA"
    assert "ignored, the field is informational" in stored(db)[0].note.splitlines()[0]


def test_a_strict_channel_answers_ae_102_at_msh7(db):
    ack = send(runner(db, timestamps="strict"), orm(msh7="20261205123045123"))
    assert ack.segment("MSA").value(1) == "AE"
    assert [ack.segment("ERR").value(2, 1, c) for c in (1, 2, 3, 4)] == ["MSH", "1", "7", "1"]
    assert ack.segment("ERR").value(3) == "102"
    assert stored(db)[0].status == "ERROR"


def test_an_unreadable_birth_date_is_still_ae_102(db):
    ack = send(runner(db), orm(dob="196203520"))
    assert ack.segment("MSA").value(1) == "AE" and ack.segment("ERR").value(3) == "102"


def test_a_standard_message_has_no_notes(db):
    send(runner(db), orm())
    assert stored(db)[0].note == ""


@pytest.mark.parametrize("junk", [b"garbage\r", b"\r\n\r\nhello there\r\n", b"PID|||STALE\r"])
def test_a_stray_line_before_msh_gets_one_ack_for_the_stored_message(db, junk):
    raw = junk + orm()
    ack = send(runner(db), raw)
    assert [s.name for s in ack.segments] == ["MSH", "MSA"]
    assert ack.segment("MSA").value(1) == "AA" and ack.segment("MSA").value(2) == "C1"
    [row] = stored(db)
    assert (row.status, row.ack_code, row.raw) == ("PROCESSED", "AA", raw)
    assert row.note.splitlines()[0].startswith("skipped 1 line(s) before MSH")


def test_the_message_after_a_stray_line_is_the_message_without_it(db):
    r = runner(db)
    send(r, b"garbage\r" + orm())
    again = send(r, orm())  # the sender resends it cleanly: a duplicate, not a new message
    assert again.segment("MSA").value(1) == "AA"
    assert len(stored(db)) == 1


def test_messages_show_lists_what_was_tolerated(db):
    send(runner(db), b"garbage\r" + orm(msh7="20261205123045 "))
    detail = db.read(lambda c: message_detail(c, stored(db)[0].id))
    assert detail["note"].splitlines() == [
        "skipped 1 line(s) before MSH, the first: 'garbage'",
        "MSH-7 '20261205123045 ' read as 2026-12-05T12:30:45 (spaces around the value)",
    ]


def test_what_was_tolerated_comes_before_the_filters_note(db):
    r = runner(db, filter={"message_types": ["ADT^*"]})
    assert send(r, orm(msh7="20261205123045 ")).segment("MSA").value(1) == "AA"
    assert stored(db)[0].status == "FILTERED"
    assert stored(db)[0].note.splitlines() == [
        "MSH-7 '20261205123045 ' read as 2026-12-05T12:30:45 (spaces around the value)",
        "ORM^O01 did not pass the channel's filter",
    ]


def test_a_real_batch_after_a_stray_line_is_still_answered_as_a_batch(db):
    batch = b"junk\rBHS|^~\\&|RIS|HOSP\r" + orm("C1") + orm("C2") + b"BTS|2\r"
    ack = asyncio.run(runner(db).receive(batch, "test")).decode()
    assert ack.startswith("BHS|") and ack.count("MSA|AA|") == 2
    assert [r.note for r in stored(db)] == ["skipped 1 line(s) before BHS, the first: 'junk'", ""]


# Where the value is used: the shipped order mapping reads what validation tolerated, the same way.

ORM_V23 = ("MSH|^~\\&|RIS|HOSP|RB|RAD|20261205123045123||ORM^O01|C9|P|2.3\r"
           "PID|1||MRN1^^^HOSP||DOE^JANE||{dob}|F\r"
           "ORC|NW|P1|||||^^^{start}\r"
           "OBR|1|P1||CT^CT HEAD" + "|" * 14 + "ACC9\r")


def order_preparer():
    from pathlib import Path

    from engine.mapping import load_mapping

    mapping = load_mapping(Path(__file__).parents[2] / "mappings" / "order-to-worklist.yaml")
    cfg = ChannelConfig.model_validate({"name": "c", "source": {"type": "mllp", "port": 0}})
    return Preparer(cfg, lambda m: [dict(r) for r in mapping.apply(m, provenance=False).records])


def test_a_tolerated_birth_date_and_scheduled_start_reach_the_order_records():
    text = ORM_V23.format(dob="1962-03-20", start="20261206083000000")
    p = order_preparer().prepare(text, text.encode(), "latin-1")
    assert p.error is None, p.error
    by_kind = {r["record"]: r for r in p.records}
    assert by_kind["patient"]["birth_date"] == "19620320"
    assert by_kind["order"]["scheduled_start"] == "20261206083000.000"
    assert [n.split(" ", 1)[0] for n in p.notes] == ["MSH-7", "PID-7", "ORC-7.4"]


def test_an_unreadable_scheduled_start_is_ae_102_at_orc_7_4():
    text = ORM_V23.format(dob="19620320", start="12/06/2026 08:30")
    p = order_preparer().prepare(text, text.encode(), "latin-1")
    assert (p.status, p.error.code, str(p.error.location)) == ("ERROR", 102, "ORC^1^7^4")


def test_nul_padding_after_the_last_segment_is_aa_and_noted(db):
    ack = send(runner(db), orm() + b"\x00\x00\x00\x00")
    assert ack.segment("MSA").value(1) == "AA"
    assert stored(db)[0].note.splitlines() == ["skipped 1 line(s) of control characters only, the first: "
                                               "'\\x00\\x00\\x00\\x00'"]


def test_a_v27_style_msh2_in_an_older_message_is_aa_and_noted(db):
    ack = send(runner(db), orm().replace(b"MSH|^~\\&|", b"MSH|^~\\&#|", 1))
    assert ack.segment("MSA").value(1) == "AA"
    assert stored(db)[0].note.splitlines() == ["MSH-2 '^~\\\\&#' read with '#' as the truncation character of v2.7"]


# No timestamp a sender writes may escape as anything but an ACK decision.

_TS_TEXT = st.text(alphabet="0123456789+-.:, TZUCGMa/\x00", max_size=26)


@settings(max_examples=300, deadline=None)
@given(_TS_TEXT, _TS_TEXT, _TS_TEXT, st.sampled_from(["lenient", "strict"]))
def test_any_timestamp_text_is_accepted_noted_or_answered_with_102(msh7, dob, start, mode):
    cfg = ChannelConfig.model_validate({"name": "c", "source": {"type": "mllp", "port": 0},
                                        "accept": {"timestamps": mode}})
    text = ORM_V23.format(dob=dob, start=start).replace("20261205123045123", msh7.replace("|", ""), 1)
    p = Preparer(cfg).prepare(text, text.encode(), "latin-1")
    assert p.error is None or p.error.code == 102
    if mode == "strict":
        assert [n for n in p.notes if " read as " in n or "ignored" in n] == []


def test_a_report_with_line_feeds_inside_obx5_is_aa_and_keeps_its_lines(db):
    # Mirth (nextgenhealthcare/connect #650): plain-text report lines separated by LF in OBX-5.
    oru = (b"MSH|^~\\&|RIS|HOSP|EHR|HOSP|20261205||ORU^R01|R1|P|2.3\r"
           b"PID|1||MRN1^^^HOSP||DOE^JANE||19700101|F\r"
           b"OBX|1|TX|||FINDINGS:\nNo acute disease.\nNAD||||||F\r")
    ack = send(runner(db), oru)
    assert ack.segment("MSA").value(1) == "AA"
    [row] = stored(db)
    assert row.note.splitlines() == ["kept 2 line feed(s) inside fields: no segment follows them"]
    text = db.read(lambda c: c.execute(select(messages.c.text)).scalar_one())
    assert Message(text).value("OBX", 5) == "FINDINGS:\nNo acute disease.\nNAD"


def test_a_message_refused_for_its_timestamp_is_still_found_by_patient_and_accession(db):
    send(runner(db), orm(dob="196203520"))
    keys = db.read(lambda c: c.execute(select(messages.c.status, messages.c.patient_id,
                                              messages.c.accession_number)).one())
    assert tuple(keys) == ("ERROR", "MRN1", "ACC1")


class LeavesAlone:
    name = "leaves-alone"

    def apply(self, conn, ctx):
        ctx.note(False, "order P1 is already cancelled")
        return []


def test_the_handlers_notes_follow_what_was_tolerated(db):
    cfg = ChannelConfig.model_validate({"name": "c", "source": {"type": "mllp", "port": 0}})
    r = ChannelRunner(cfg, Preparer(cfg), Persister(cfg, [LeavesAlone()], "RB", "RAD"), db)
    assert send(r, b"junk\r" + orm()).segment("MSA").value(1) == "AA"
    [row] = stored(db)
    assert row.status == "UNCHANGED"
    assert row.note.splitlines() == ["skipped 1 line(s) before MSH, the first: 'junk'",
                                     "order P1 is already cancelled"]
