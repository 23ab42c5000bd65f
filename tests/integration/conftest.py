"""Helpers for integration tests: channel files, a raw MLLP sender, ACK reading."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7.mllp
import pytest

from engine.store.database import Database
from tests.conftest import EngineProcess, free_port


def write_channel(engine: EngineProcess, name: str, body: str) -> None:
    """Write ``config/channels/<name>.yaml``."""
    (engine.config_dir / "channels" / f"{name}.yaml").write_text(textwrap.dedent(body))


def write_engine_yaml(engine: EngineProcess, extra: str = "") -> None:
    """Rewrite ``engine.yaml`` (data_dir plus ``extra`` YAML)."""
    extra = textwrap.dedent(extra)
    dicom = "" if "dicom:" in extra else "dicom: {enabled: false}\n"  # no fixed port 11112 in tests
    text = f"data_dir: {engine.data_dir}\n{dicom}" + extra
    (engine.config_dir / "engine.yaml").write_text(text)


def inbound_channel(port: int, extra: str = "") -> str:
    """A channel accepting every message type on ``port``."""
    return f"""\
name: inbound
source:
  type: mllp
  port: {port}
accept:
  message_types: ["*"]
{textwrap.dedent(extra)}"""


@dataclass(frozen=True)
class Ack:
    """The parts of an ACK a test looks at."""

    raw: bytes

    @property
    def segments(self) -> list[list[str]]:
        text = self.raw.decode("latin-1")
        return [s.split("|") for s in text.replace("\n", "\r").split("\r") if s]

    def all(self, name: str) -> list[list[str]]:
        return [s for s in self.segments if s[0] == name]

    @property
    def codes(self) -> list[str]:
        """MSA-1 of every MSA (one for a single message, one per message in a batch reply)."""
        return [s[1] for s in self.all("MSA")]

    @property
    def code(self) -> str:
        codes = self.codes
        assert len(codes) == 1, f"expected one MSA in {self.raw!r}"
        return codes[0]

    def field(self, segment: str, number: int) -> str:
        seg = self.all(segment)[0]
        # MSH-1 is the field separator itself, so MSH fields sit one index lower.
        index = number - 1 if segment == "MSH" else number
        return seg[index] if index < len(seg) else ""


class Sender:
    """python-hl7's asyncio MLLP client, sending payload bytes exactly as given."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.reader: hl7.mllp.HL7StreamReader | None = None
        self.writer: hl7.mllp.HL7StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            hl7.mllp.open_hl7_connection("127.0.0.1", self.port), self.timeout
        )

    async def send(self, payload: bytes) -> Ack:
        """Frame ``payload`` (``writeblock``), send it and read one answer block."""
        if self.writer is None:
            await self.connect()
        assert self.writer is not None and self.reader is not None
        self.writer.writeblock(payload)
        await self.writer.drain()
        return Ack(await asyncio.wait_for(self.reader.readblock(), self.timeout))

    async def write_raw(self, data: bytes) -> None:
        """Write bytes without any framing."""
        if self.writer is None:
            await self.connect()
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def send_all(port: int, payloads: Iterable[bytes], timeout: float = 10.0) -> list[Ack]:
    """Send ``payloads`` in order on one python-hl7 connection; the answers, in order."""

    async def scenario() -> list[Ack]:
        sender = Sender(port, timeout)
        try:
            return [await sender.send(p) for p in payloads]
        finally:
            await sender.close()

    return asyncio.run(scenario())


def adt(control_id: str, patient_id: str = "P1", event: str = "A08", sender: str = "HIS",
        extra: str = "") -> bytes:
    """A small, valid ADT message."""
    segments = [
        f"MSH|^~\\&|{sender}|HOSP|RADBRIDGE|RAD|20240101120000||ADT^{event}|{control_id}|P|2.5.1",
        "EVN|A08|20240101120000",
        f"PID|1||{patient_id}^^^HOSP^MR||DOE^JANE{extra}||19700101|F",
        "PV1|1|O",
    ]
    return ("\r".join(segments) + "\r").encode("ascii")


def create_store(engine: EngineProcess) -> None:
    """The migrated SQLite store `radbridge run` would create, for CLI tests that never start the engine
    (the other commands refuse to create it)."""
    store = Database(f"sqlite:///{engine.data_dir / 'radbridge.db'}")
    store.migrate()
    store.close()


def cli_json(engine: EngineProcess, *args: str) -> Any:
    """Run a CLI command with ``--json`` and parse its output."""
    result = engine.cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sqlite_rows(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read the engine's SQLite store directly."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def mllp_port() -> int:
    return free_port()


@pytest.fixture
def inbound(engine_process: EngineProcess, mllp_port: int) -> Iterator[EngineProcess]:
    """A running engine with one ``*`` channel on ``mllp_port``."""
    write_channel(engine_process, "inbound", inbound_channel(mllp_port))
    engine_process.start(wait_port=mllp_port)
    yield engine_process
