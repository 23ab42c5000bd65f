"""The ``radbridge`` command line against real configuration files and a running engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import EngineProcess, free_port
from tests.integration.conftest import adt, cli_json, inbound_channel, send_all, write_channel

pytestmark = pytest.mark.timeout(90)

BROKEN_CHANNELS = {
    "unknown key": ("  colour: blue\n", 5, "source.colour"),
    "wrong type": ("  max_message_bytes: lots\n", 5, "source.max_message_bytes"),
    "missing environment variable": ("  idle_timeout_seconds: ${RADBRIDGE_TEST_UNSET}\n", 5,
                                     "source.idle_timeout_seconds"),
}


def _order(control_id: str) -> bytes:
    segments = [
        f"MSH|^~\\&|RIS|HOSP|RADBRIDGE|RAD|20240101120000||ORM^O01|{control_id}|P|2.5.1",
        "PID|1||P9^^^HOSP^MR||DOE^JOHN||19700101|M",
        "ORC|NW|PL1",
        "OBR|1|PL1||CT^CT HEAD",
    ]
    return ("\r".join(segments) + "\r").encode("ascii")


def _send(port: int, *payloads: bytes) -> list[str]:
    return [ack.code for ack in send_all(port, payloads)]


@pytest.mark.parametrize("case", sorted(BROKEN_CHANNELS))
def test_check_config_names_file_line_and_field_of_a_broken_channel(
        engine_process: EngineProcess, case: str) -> None:
    line, number, field = BROKEN_CHANNELS[case]
    write_channel(engine_process, "broken", inbound_channel(2575) + "")
    path = engine_process.config_dir / "channels" / "broken.yaml"
    text = path.read_text().replace("  port: 2575\n", "  port: 2575\n" + line)
    path.write_text(text)
    assert text.splitlines()[number - 1] == line.rstrip("\n")

    result = engine_process.cli("check-config")

    assert result.returncode != 0
    assert f"{path}:{number}: {field}:" in result.stderr


def test_check_config_accepts_a_valid_channel(engine_process: EngineProcess) -> None:
    write_channel(engine_process, "good", inbound_channel(2575))

    result = engine_process.cli("check-config")

    assert result.returncode == 0, result.stderr


def test_send_exits_zero_when_every_message_gets_aa(inbound: EngineProcess, mllp_port: int,
                                                    tmp_path: Path) -> None:
    (tmp_path / "a.hl7").write_bytes(adt("SEND1"))

    result = inbound.cli("send", f"127.0.0.1:{mllp_port}", str(tmp_path / "a.hl7"))

    assert result.returncode == 0, result.stdout
    assert "\tAA\t" in result.stdout


def test_send_exits_non_zero_on_ae(inbound: EngineProcess, mllp_port: int, tmp_path: Path) -> None:
    (tmp_path / "a.hl7").write_bytes(adt("SEND2", patient_id="P1"))
    (tmp_path / "b.hl7").write_bytes(adt("SEND2", patient_id="P2"))

    result = inbound.cli("send", f"127.0.0.1:{mllp_port}",
                         str(tmp_path / "a.hl7"), str(tmp_path / "b.hl7"))

    assert result.returncode != 0
    assert [line.split("\t")[1] for line in result.stdout.splitlines()] == ["AA", "AE"]


@pytest.fixture
def three_stored(inbound: EngineProcess, mllp_port: int) -> EngineProcess:
    """An ADT (AA), an order (AA) and an ADT with processing id X (AR)."""
    rejected = adt("LIST3").replace(b"|P|2.5.1", b"|X|2.5.1")
    assert _send(mllp_port, adt("LIST1"), _order("LIST2"), rejected) == ["AA", "AA", "AR"]
    return inbound


def _ids(engine: EngineProcess, *filters: str) -> list[str]:
    return [r["control_id"] for r in cli_json(engine, "messages", "list", *filters)]


def test_messages_list_without_filters_shows_everything_newest_first(
        three_stored: EngineProcess) -> None:
    assert _ids(three_stored) == ["LIST3", "LIST2", "LIST1"]


def test_messages_list_filters_by_status(three_stored: EngineProcess) -> None:
    assert _ids(three_stored, "--status", "REJECTED") == ["LIST3"]


def test_messages_list_filters_by_type_with_wildcard(three_stored: EngineProcess) -> None:
    assert _ids(three_stored, "--type", "ORM^*") == ["LIST2"]


def test_messages_list_filters_by_control_id(three_stored: EngineProcess) -> None:
    assert _ids(three_stored, "--control-id", "LIST1") == ["LIST1"]


def test_status_json_counts_per_channel(three_stored: EngineProcess) -> None:
    status = cli_json(three_stored, "status")

    assert status["channels"] == {"inbound": {"received": 3, "errors": 1, "filtered": 0, "unchanged": 0, "queued": 0,
                                              "delivery_errors": 0, "oldest_queued_seconds": None}}
    assert set(status) == {"channels", "jobs", "worklist_steps"}


def test_messages_list_json_rows_have_the_documented_fields(three_stored: EngineProcess) -> None:
    (row,) = cli_json(three_stored, "messages", "list", "--control-id", "LIST2")

    assert set(row) == {"id", "channel", "received_at", "status", "message_type", "control_id",
                        "patient_id", "accession_number", "ack_code", "error_code",
                        "error_location", "duplicate_count"}
    assert (row["message_type"], row["patient_id"], row["ack_code"]) == ("ORM^O01", "P9", "AA")
    assert re.match(r"\d{4}-\d\d-\d\dT", row["received_at"])


def test_send_exits_non_zero_when_nobody_listens(
        engine_process: EngineProcess, tmp_path: Path) -> None:
    (tmp_path / "a.hl7").write_bytes(adt("SEND3"))

    result = engine_process.cli("send", f"127.0.0.1:{free_port()}", str(tmp_path / "a.hl7"))

    assert result.returncode != 0
    assert "\tERROR\t" in result.stdout


def test_messages_replay_of_an_unknown_id_exits_non_zero(three_stored: EngineProcess) -> None:
    result = three_stored.cli("messages", "replay", "999999")

    assert result.returncode != 0
    assert "999999: no such message" in result.stdout
