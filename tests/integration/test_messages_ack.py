"""``radbridge messages ack``: AE/AR messages an operator dealt with leave "needs attention" (hl7fix5).

Before, ``radbridge status`` counted every message ever answered AE/AR under "needs attention" until it
was replayed successfully, which many never are (the sender resent a fixed copy, a test message).
Real engine, python-hl7's MLLP client, the CLI as the operator runs it.
"""

from __future__ import annotations

import getpass
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import EngineProcess
from tests.integration.conftest import adt, cli_json, send_all, sqlite_rows

pytestmark = pytest.mark.timeout(120)


def _refused(control_id: str) -> bytes:
    """An ADT without its message type (MSH-9): AR."""
    return adt(control_id).replace(b"ADT^A08", b"")


def _attention(engine: EngineProcess) -> list[str]:
    return [line for line in cli_json(engine, "status")["attention"] if line.startswith("channel inbound:")]


def _channel(engine: EngineProcess) -> dict[str, Any]:
    return dict(cli_json(engine, "status")["channels"]["inbound"])


def test_acknowledged_ae_ar_messages_are_no_longer_counted_as_needing_attention(
    inbound: EngineProcess, mllp_port: int
) -> None:
    acks = send_all(mllp_port, [_refused(f"ACK{n}") for n in range(3)])
    assert [a.code for a in acks] == ["AR", "AR", "AR"]
    ids = sorted(r["id"] for r in cli_json(inbound, "messages", "list", "--status", "REJECTED"))
    (line,) = _attention(inbound)
    assert line.startswith("channel inbound: 3 message(s) answered AE/AR, the newest ")
    assert "radbridge messages ack ID, or --all-before TIME --channel inbound" in line

    done = inbound.cli("messages", "ack", str(ids[0]))
    assert done.returncode == 0 and done.stdout.startswith("1 message(s) acknowledged"), done.stderr
    assert _attention(inbound)[0].startswith("channel inbound: 2 message(s) answered AE/AR")
    assert (_channel(inbound)["errors"], _channel(inbound)["errors_acknowledged"]) == (3, 1)  # the total stays
    again = inbound.cli("messages", "ack", str(ids[0]), "999999")
    assert again.returncode == 1 and "already acknowledged" in again.stderr
    assert again.stdout == "0 message(s) acknowledged\n"  # not "...: radbridge status no longer counts them"
    assert "999999: no such message" in again.stderr

    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    rest = inbound.cli("messages", "ack", "--all-before", later, "--channel", "inbound")
    assert rest.returncode == 0 and rest.stdout.startswith("2 message(s) acknowledged"), rest.stderr
    assert _attention(inbound) == []
    assert len(cli_json(inbound, "messages", "list", "--status", "REJECTED")) == 3  # kept, still listed
    assert cli_json(inbound, "messages", "show", str(ids[0]))["acknowledged_at"]
    audit = sqlite_rows(inbound.data_dir / "radbridge.db",
                        "SELECT actor, detail FROM audit_events WHERE action = 'message.ack' ORDER BY id")
    assert [a for a, _ in audit] == [getpass.getuser()] * 3
    assert [json.loads(d)["message_ids"] for _, d in audit] == [[ids[0]], [], ids[1:]]

    time.sleep(0.01)
    (new,) = send_all(mllp_port, [_refused("ACK9")])  # a new refusal needs attention again
    assert new.code == "AR" and _attention(inbound)[0].startswith("channel inbound: 1 message(s) answered AE/AR")
    assert inbound.cli("messages", "ack").returncode == 2  # neither ids nor --all-before
    replayed = inbound.cli("messages", "replay", str(ids[0]))
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr  # still refused: its outcome is new
    assert _attention(inbound)[0].startswith("channel inbound: 2 message(s) answered AE/AR")


def test_show_and_list_say_acknowledged_or_not_without_printing_none(inbound: EngineProcess, mllp_port: int) -> None:
    """hl7fix6: ``messages show`` printed ``acknowledged_at: None`` for every message not acknowledged, also one
    answered AA (nothing to acknowledge); and ``messages list`` could not tell which refused ones ``status``
    still counts. Now: when, "not acknowledged" for an AE/AR one, nothing for the others; no "None" at all."""
    acks = send_all(mllp_port, [adt("SHOWOK"), _refused("SHOWAR1"), _refused("SHOWAR2")])
    assert [a.code for a in acks] == ["AA", "AR", "AR"]
    ids = {cid: cli_json(inbound, "messages", "list", "--control-id", cid)[0]["id"]
           for cid in ("SHOWOK", "SHOWAR1", "SHOWAR2")}
    assert inbound.cli("messages", "ack", str(ids["SHOWAR1"])).returncode == 0

    def shown(cid: str) -> list[str]:
        result = inbound.cli("messages", "show", str(ids[cid]))
        assert result.returncode == 0, result.stderr
        assert "None" not in result.stdout
        return [line for line in result.stdout.splitlines() if line.startswith("acknowledged_at:")]

    assert shown("SHOWOK") == []
    assert shown("SHOWAR2") == ["acknowledged_at: not acknowledged"]
    (acknowledged,) = shown("SHOWAR1")
    assert datetime.fromisoformat(acknowledged.split(": ", 1)[1]) > datetime.now(UTC) - timedelta(minutes=5)

    table = inbound.cli("messages", "list").stdout.splitlines()
    rows = {cells["control_id"]: cells for cells in (dict(zip(table[0].split("\t"), line.split("\t"), strict=True))
                                                     for line in table[1:])}
    assert rows["SHOWOK"]["acknowledged_at"] == "" and rows["SHOWAR2"]["acknowledged_at"] == "not acknowledged"
    assert rows["SHOWAR1"]["acknowledged_at"] == acknowledged.split(": ", 1)[1]
    listed = {r["control_id"]: r for r in cli_json(inbound, "messages", "list", "--status", "REJECTED")}
    assert listed["SHOWAR1"]["acknowledged_at"] and listed["SHOWAR2"]["acknowledged_at"] is None
