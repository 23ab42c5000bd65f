"""The public HL7 corpus over MLLP, sent by python-hl7's asyncio client.

Every valid or edge file is accepted; every malformed file is refused without
hurting the connection or the listener; broken framing is kept for inspection.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import EngineProcess
from tests.integration.conftest import (
    Ack,
    Sender,
    adt,
    cli_json,
    inbound_channel,
    send_all,
    sqlite_rows,
    write_channel,
)

pytestmark = pytest.mark.timeout(120)


# Sample files reuse control ids (MSG00001 …) for different messages; this
# channel treats such reuse as a new message so each file is judged on its own.
CORPUS_CHANNEL_EXTRA = "duplicates:\n  on_conflict: accept\n"


@pytest.fixture
def inbound(engine_process: EngineProcess, mllp_port: int) -> EngineProcess:
    write_channel(engine_process, "inbound", inbound_channel(mllp_port, CORPUS_CHANNEL_EXTRA))
    engine_process.start(wait_port=mllp_port)
    return engine_process


def _files(corpus: Path, kind: str) -> list[Path]:
    return sorted((corpus / "hl7" / kind).glob("*.hl7"))


def _malformed(corpus: Path) -> list[Path]:
    return [p for p in _files(corpus, "malformed") if p.name not in READ_BY_A_TOLERANT_READER]


def _stored(engine: EngineProcess, *args: str) -> list[dict[str, object]]:
    return cli_json(engine, "messages", "list", "--limit", "1000", *args)


def test_every_valid_and_edge_file_is_acknowledged_aa(inbound: EngineProcess, mllp_port: int,
                                                       corpus: Path) -> None:
    async def scenario() -> dict[str, list[str]]:
        sender = Sender(mllp_port)
        codes = {}
        for path in _files(corpus, "valid") + _files(corpus, "edge"):
            codes[path.name] = (await sender.send(path.read_bytes())).codes
        await sender.close()
        return codes

    codes = asyncio.run(scenario())

    assert len(codes) == 56
    not_accepted = {name: c for name, c in codes.items() if not c or set(c) != {"AA"}}
    assert not_accepted == {}


BATCHES = {
    "pyhl7_BHS_batch_two_messages.hl7": 2,
    "pyhl7_FHS_BHS_batch_file.hl7": 1,
    "mirth_batch_SIU_multiple_no_BHS.hl7": 3,
}


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_a_batch_reply_has_one_aa_per_message(inbound: EngineProcess, mllp_port: int,
                                              corpus: Path, name: str) -> None:
    batch = (corpus / "hl7" / "edge" / name).read_bytes()

    async def scenario() -> list[str]:
        sender = Sender(mllp_port)
        ack = await sender.send(batch)
        await sender.close()
        return ack.codes

    assert asyncio.run(scenario()) == ["AA"] * BATCHES[name]
    assert len(_stored(inbound)) == BATCHES[name]


def test_a_single_message_is_stored_byte_for_byte_as_sent(inbound: EngineProcess, mllp_port: int,
                                                           corpus: Path) -> None:
    files = [p for p in _files(corpus, "valid") + _files(corpus, "edge") if p.name not in BATCHES]

    send_all(mllp_port, [p.read_bytes() for p in files])

    stored = sqlite_rows(inbound.data_dir / "radbridge.db", "SELECT raw FROM messages ORDER BY id")
    assert [row[0] for row in stored] == [p.read_bytes() for p in files]


#: Malformed by the manifest, yet readable one way only: the tolerant reader (issue #11) accepts
#: them with a note, on a channel with the default ``accept.timestamps: lenient``.
READ_BY_A_TOLERANT_READER = {
    "orthanctools_ORM_O01_NW_badMSH7_latin1.hl7":
        "MSH-7 '2017-04-25 07:31:13.123456' read as 2017-04-25T07:31:13.123456 (ISO 8601 form; fraction of 6 digits)",
}


def test_a_malformed_file_a_tolerant_reader_can_read_is_aa_with_a_note(inbound: EngineProcess, mllp_port: int,
                                                                       corpus: Path) -> None:
    for number, (name, note) in enumerate(sorted(READ_BY_A_TOLERANT_READER.items())):
        [ack] = send_all(mllp_port, [(corpus / "hl7" / "malformed" / name).read_bytes()])
        assert ack.code == "AA"
        row_id = _stored(inbound)[0]["id"]
        detail = cli_json(inbound, "messages", "show", str(row_id))
        assert detail["note"] == note, number


def test_every_malformed_file_is_refused_and_the_connection_keeps_working(
        inbound: EngineProcess, mllp_port: int, corpus: Path) -> None:
    async def scenario() -> dict[str, tuple[list[str], str]]:
        sender = Sender(mllp_port)
        outcome = {}
        for number, path in enumerate(_malformed(corpus)):
            try:
                codes = (await sender.send(path.read_bytes())).codes
            except (asyncio.IncompleteReadError, ConnectionError):
                codes = ["closed"]
                await sender.close()
            follow_up = (await sender.send(adt(f"FOLLOW{number}"))).code
            outcome[path.name] = (codes, follow_up)
        await sender.close()
        return outcome

    outcome = asyncio.run(scenario())

    assert len(outcome) == 17 - len(READ_BY_A_TOLERANT_READER)
    accepted = {name: o for name, o in outcome.items() if "AA" in o[0] or "CA" in o[0]}
    assert accepted == {}
    assert {name: o[1] for name, o in outcome.items() if o[1] != "AA"} == {}


def test_malformed_files_are_kept_in_the_store_as_error_or_rejected(
        inbound: EngineProcess, mllp_port: int, corpus: Path) -> None:
    files = _malformed(corpus)

    send_all(mllp_port, [p.read_bytes() for p in files])

    stored = _stored(inbound)
    assert len(stored) == len(files)
    assert {row["status"] for row in stored} <= {"ERROR", "REJECTED"}


def test_garbage_without_framing_is_kept_and_the_next_message_is_accepted(
        inbound: EngineProcess, mllp_port: int) -> None:
    async def scenario() -> str:
        sender = Sender(mllp_port)
        await sender.write_raw(b"GET / HTTP/1.1\r\nHost: radbridge\r\n\r\n")
        code = (await sender.send(adt("AFTERJUNK"))).code
        await sender.close()
        return code

    assert asyncio.run(scenario()) == "AA"
    kept = [row for row in _stored(inbound) if row["status"] in ("ERROR", "REJECTED")]
    assert len(kept) == 1


def test_a_frame_cut_off_by_close_is_kept_and_a_new_connection_is_accepted(
        inbound: EngineProcess, mllp_port: int) -> None:
    async def scenario() -> str:
        sender = Sender(mllp_port)
        await sender.write_raw(b"\x0b" + adt("TRUNCATED")[:60])
        await sender.close()
        sender = Sender(mllp_port)
        code = (await sender.send(adt("AFTERCUT"))).code
        await sender.close()
        return code

    assert asyncio.run(scenario()) == "AA"
    assert _wait_for_kept(inbound) == 1


def _wait_for_kept(engine: EngineProcess, timeout: float = 60.0) -> int:
    """The engine stores a cut-off frame after it sees the close: wait for that row."""
    deadline = time.monotonic() + timeout
    while True:
        kept = [r for r in _stored(engine) if r["status"] in ("ERROR", "REJECTED")]
        if kept or time.monotonic() > deadline:
            return len(kept)
        time.sleep(0.1)


def test_an_oversize_frame_is_refused_kept_and_the_next_message_is_accepted(
        engine_process: EngineProcess, mllp_port: int) -> None:
    channel = inbound_channel(mllp_port).replace("  port:", "  max_message_bytes: 2048\n  port:")
    write_channel(engine_process, "inbound", channel)
    engine_process.start(wait_port=mllp_port)
    oversize = adt("BIG", extra="X" * 5000)

    async def scenario() -> tuple[str, str]:
        sender = Sender(mllp_port)
        refused = (await sender.send(oversize)).code
        follow_up = (await sender.send(adt("AFTERBIG"))).code
        await sender.close()
        return refused, follow_up

    refused, follow_up = asyncio.run(scenario())

    assert refused in ("AE", "AR")
    assert follow_up == "AA"
    kept = [r for r in _stored(engine_process) if r["status"] in ("ERROR", "REJECTED")]
    assert len(kept) == 1


def test_pipelined_frames_are_answered_in_order(inbound: EngineProcess, mllp_port: int) -> None:
    async def scenario() -> list[str]:
        sender = Sender(mllp_port)
        await sender.write_raw(b"".join(b"\x0b" + adt(f"PIPE{n}") + b"\x1c\r" for n in range(20)))
        assert sender.reader is not None
        acks = [Ack(await asyncio.wait_for(sender.reader.readblock(), 10)) for _ in range(20)]
        await sender.close()
        return [a.field("MSA", 2) for a in acks]

    assert asyncio.run(scenario()) == [f"PIPE{n}" for n in range(20)]


def test_a_frame_arriving_byte_by_byte_is_accepted(inbound: EngineProcess, mllp_port: int) -> None:
    framed = b"\x0b" + adt("DRIP") + b"\x1c\r"

    async def scenario() -> str:
        sender = Sender(mllp_port)
        for byte in framed:
            await sender.write_raw(bytes([byte]))
            await asyncio.sleep(0)
        assert sender.reader is not None
        ack = Ack(await asyncio.wait_for(sender.reader.readblock(), 10))
        await sender.close()
        return ack.code

    assert asyncio.run(scenario()) == "AA"


def test_an_unfinished_frame_is_kept_when_the_idle_timeout_closes_the_connection(
        engine_process: EngineProcess, mllp_port: int) -> None:
    # The timer runs from the connect; the partial frame must arrive before it fires.
    channel = inbound_channel(mllp_port).replace("  port:", "  idle_timeout_seconds: 2\n  port:")
    write_channel(engine_process, "inbound", channel)
    engine_process.start(wait_port=mllp_port)

    async def scenario() -> bytes:
        sender = Sender(mllp_port)
        await sender.write_raw(b"\x0b" + adt("IDLE")[:80])
        assert sender.reader is not None
        rest = await asyncio.wait_for(sender.reader.read(), 10)
        await sender.close()
        return rest

    assert asyncio.run(scenario()) == b""
    assert _wait_for_kept(engine_process) == 1
