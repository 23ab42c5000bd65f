"""ADT^A08 over MLLP (python-hl7's client): PID-7 ``""`` clears the stored birth date, PID-7 empty keeps it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import hl7
import pytest
from hl7.mllp import open_hl7_connection

from tests.conftest import ROOT, EngineProcess, free_port

from .conftest import cli_json, sqlite_rows

A08 = ("MSH|^~\\&|PAS|NORTH|RADBRIDGE|NORTH|20261122090000||ADT^{event}|{control}|P|2.5.1\r"
       "EVN|{event}|20261122090000\rPID|1||MRN7^^^NORTH^MR||PARKER^ANN||{birth}|F\rPV1|1|O\r")


async def _send(port: int, texts: list[str]) -> list[str]:
    reader, writer = await open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    codes = []
    try:
        for text in texts:
            writer.writemessage(hl7.parse(text))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readmessage(), 20)
            codes.append(str(ack.segment("MSA")[1]))
    finally:
        writer.close()
    return codes


@pytest.fixture
def adt_engine(engine_process: EngineProcess) -> Iterator[tuple[EngineProcess, int]]:
    port = free_port()
    (engine_process.config_dir / "engine.yaml").write_text(
        f"data_dir: {engine_process.data_dir}\nmappings_dir: {ROOT / 'mappings'}\ndicom: {{enabled: false}}\n")
    (engine_process.config_dir / "channels" / "adt.yaml").write_text(
        f"name: adt\nsource: {{type: mllp, port: {port}}}\naccept: {{message_types: ['ADT^*']}}\n"
        "mapping: [adt-to-patient]\nhandlers: [patients]\n")
    engine_process.start(wait_port=port)
    yield engine_process, port


def _birth_date(engine: EngineProcess) -> str:
    (row,) = sqlite_rows(engine.data_dir / "radbridge.db", "SELECT birth_date FROM patients")
    return str(row[0])


def test_a08_with_null_birth_date_clears_it_and_an_empty_one_does_not(
    adt_engine: tuple[EngineProcess, int]
) -> None:
    engine, port = adt_engine
    assert asyncio.run(_send(port, [A08.format(event="A01", control="N1", birth="19800202"),
                                    A08.format(event="A08", control="N2", birth="")])) == ["AA", "AA"]
    assert _birth_date(engine) == "19800202"  # empty: no change

    assert asyncio.run(_send(port, [A08.format(event="A08", control="N3", birth='""')])) == ["AA"]
    assert _birth_date(engine) == ""
    (row,) = cli_json(engine, "messages", "list", "--control-id", "N3")
    detail = cli_json(engine, "messages", "show", str(row["id"]))
    assert 'birth_date cleared (sent as HL7 null "")' in detail["note"]
