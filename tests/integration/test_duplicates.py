"""Resent messages (same sender and control id) against a running engine.

ARCHITECTURE "exactly-once effect": a resend with the same content returns the
original ACK and changes nothing; the same control id with other content is
refused with AE and ERR-3 205 (duplicate key identifier).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import EngineProcess
from tests.integration.conftest import Ack, Sender, adt, cli_json

pytestmark = pytest.mark.timeout(60)


def _send_all(port: int, *payloads: bytes) -> list[Ack]:
    async def scenario() -> list[Ack]:
        sender = Sender(port)
        acks = [await sender.send(p) for p in payloads]
        await sender.close()
        return acks

    return asyncio.run(scenario())


def _rows(engine: EngineProcess, control_id: str) -> list[dict[str, object]]:
    return cli_json(engine, "messages", "list", "--control-id", control_id)


def test_a_resent_message_gets_the_original_ack(inbound: EngineProcess, mllp_port: int) -> None:
    first, second = _send_all(mllp_port, adt("DUP1"), adt("DUP1"))

    assert first.code == "AA"
    assert second.all("MSA") == first.all("MSA")
    assert second.field("MSH", 10) == first.field("MSH", 10)


def test_a_resent_message_is_stored_once_with_duplicate_count_one(
        inbound: EngineProcess, mllp_port: int) -> None:
    _send_all(mllp_port, adt("DUP2"), adt("DUP2"))

    rows = _rows(inbound, "DUP2")
    assert [(r["status"], r["duplicate_count"]) for r in rows] == [("PROCESSED", 1)]


def test_a_message_resent_after_a_restart_gets_the_original_ack(
        inbound: EngineProcess, mllp_port: int) -> None:
    (first,) = _send_all(mllp_port, adt("DUP3"))
    inbound.kill()
    inbound.start(wait_port=mllp_port)

    (second,) = _send_all(mllp_port, adt("DUP3"))

    assert second.raw == first.raw
    assert [r["duplicate_count"] for r in _rows(inbound, "DUP3")] == [1]


def test_a_reused_control_id_with_a_different_body_gets_ae_205(
        inbound: EngineProcess, mllp_port: int) -> None:
    first, second = _send_all(mllp_port, adt("DUP4", patient_id="P1"), adt("DUP4", patient_id="P2"))

    assert first.code == "AA"
    assert second.code == "AE"
    assert second.field("ERR", 3).split("^")[0] == "205"


def test_a_reused_control_id_does_not_touch_the_original(
        inbound: EngineProcess, mllp_port: int) -> None:
    _send_all(mllp_port, adt("DUP5", patient_id="P1"), adt("DUP5", patient_id="P2"))

    rows = {r["status"]: r for r in _rows(inbound, "DUP5")}
    assert sorted(rows) == ["ERROR", "PROCESSED"]
    assert rows["PROCESSED"]["duplicate_count"] == 0
    assert rows["PROCESSED"]["patient_id"] == "P1"
