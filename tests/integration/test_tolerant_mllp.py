"""What real senders emit, over MLLP from python-hl7's client: tolerated, stored once, answered once.

A stray line before MSH gets one ACK for the one message stored (not a batch reply whose first
MSA is AR); timestamps outside the HL7 grammar are AA on a lenient channel and AE 102 on a
strict one; ``radbridge messages show`` says what was tolerated.
"""

from __future__ import annotations

import pytest

from tests.conftest import EngineProcess, free_port, wait_for_port
from tests.integration.conftest import Ack, adt, cli_json, inbound_channel, send_all, write_channel

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ports(engine_process: EngineProcess) -> dict[str, int]:
    """A lenient (default) and a strict channel in one engine."""
    ports = {"lenient": free_port(), "strict": free_port()}
    write_channel(engine_process, "inbound", inbound_channel(ports["lenient"]))
    strict = f"name: strict\nsource: {{type: mllp, port: {ports['strict']}}}\naccept: {{timestamps: strict}}\n"
    write_channel(engine_process, "strict", strict)
    engine_process.start(wait_port=ports["lenient"])
    wait_for_port(ports["strict"], proc=engine_process.proc)  # the channels open one after the other
    return ports


def _with_msh7(control_id: str, msh7: str) -> bytes:
    return adt(control_id).replace(b"|20240101120000||ADT", b"|" + msh7.encode() + b"||ADT", 1)


def _tolerated(engine: EngineProcess, control_id: str) -> list[str]:
    [row] = cli_json(engine, "messages", "list", "--control-id", control_id)
    detail = cli_json(engine, "messages", "show", str(row["id"]))
    return list(detail["note"].splitlines())


def test_a_stray_line_before_msh_gets_one_ack_for_the_one_message_stored(
        engine_process: EngineProcess, ports: dict[str, int]) -> None:
    frames = [b"garbage\r" + adt("STRAY1"), b"\r\n  \r\nhello from the interface engine\r\n" + adt("STRAY2"),
              b"\x00\x00" + adt("STRAY3")]

    acks = send_all(ports["lenient"], frames)

    assert [[s[0] for s in a.segments] for a in acks] == [["MSH", "MSA"]] * 3
    assert [(a.code, a.field("MSA", 2)) for a in acks] == [("AA", "STRAY1"), ("AA", "STRAY2"), ("AA", "STRAY3")]
    stored = cli_json(engine_process, "messages", "list")
    assert sorted((r["control_id"], r["status"]) for r in stored) == [
        ("STRAY1", "PROCESSED"), ("STRAY2", "PROCESSED"), ("STRAY3", "PROCESSED")]
    assert _tolerated(engine_process, "STRAY1") == ["skipped 1 line(s) before MSH, the first: 'garbage'"]
    assert _tolerated(engine_process, "STRAY3") == ["skipped 2 character(s) before MSH on its line: '\\x00\\x00'"]


def test_a_real_batch_after_a_stray_line_is_still_a_batch(
        engine_process: EngineProcess, ports: dict[str, int]) -> None:
    batch = b"junk\rBHS|^~\\&|HIS|HOSP\r" + adt("B1") + adt("B2") + b"BTS|2\r"

    [ack] = send_all(ports["lenient"], [batch])

    assert ack.all("BHS") and ack.codes == ["AA", "AA"]
    assert len(cli_json(engine_process, "messages", "list")) == 2


MSH7_VARIANTS = {
    "FRAC": "20240101120000123",
    "SPACE": "20240101120000 ",
    "ISO": "2024-01-01 12:00:00.123456",
    "ZONE": "202401011200+01:00",
    "JUNK": "Mon Jan 1 12:00",
}


def test_timestamps_outside_the_grammar_are_aa_on_a_lenient_channel_and_noted(
        engine_process: EngineProcess, ports: dict[str, int]) -> None:
    acks = send_all(ports["lenient"], [_with_msh7(cid, v) for cid, v in MSH7_VARIANTS.items()])

    assert [a.code for a in acks] == ["AA"] * len(MSH7_VARIANTS)
    assert _tolerated(engine_process, "FRAC") == [
        "MSH-7 '20240101120000123' read as 2024-01-01T12:00:00.123 (fraction without '.')"]
    assert _tolerated(engine_process, "JUNK")[0].endswith("ignored, the field is informational")
    assert all(_tolerated(engine_process, cid) for cid in MSH7_VARIANTS)


def test_a_strict_channel_answers_ae_102_at_msh7(ports: dict[str, int]) -> None:
    acks: list[Ack] = send_all(ports["strict"], [_with_msh7("S1", MSH7_VARIANTS["FRAC"]), adt("S2")])

    assert [a.code for a in acks] == ["AE", "AA"]
    err = acks[0].all("ERR")[0]
    assert err[2] == "MSH^1^7^1" and err[3].startswith("102^")


def test_a_report_with_line_feeds_inside_a_field_is_one_message(
        engine_process: EngineProcess, ports: dict[str, int]) -> None:
    report = adt("REPORT1").replace(b"PV1|1|O\r", b"OBX|1|TX|||FINDINGS:\nNo acute disease.\nNAD||||||F\r")

    [ack] = send_all(ports["lenient"], [report])

    assert [s[0] for s in ack.segments] == ["MSH", "MSA"] and ack.code == "AA"
    assert _tolerated(engine_process, "REPORT1") == ["kept 2 line feed(s) inside fields: no segment follows them"]
