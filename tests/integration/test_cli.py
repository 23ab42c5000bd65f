"""The ``radbridge`` command line against real configuration files and a running engine."""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli.main import _parser as cli_parser
from tests.conftest import ROOT, EngineProcess, free_port
from tests.integration.conftest import adt, cli_json, create_store, inbound_channel, send_all, write_channel

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
    assert result.stdout == f"{tmp_path / 'a.hl7'}\tAA\n"  # the ACK's text only when it has one


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

    (inbound,) = status["channels"].values()
    assert {k: inbound[k] for k in inbound if k not in ("listen", "file")} == {
        "received": 3, "errors": 1, "errors_acknowledged": 0, "filtered": 0, "unchanged": 0, "queued": 0,
        "delivery_errors": 0, "oldest_queued_seconds": None, "newest_error_seconds": inbound["newest_error_seconds"]}
    assert inbound["newest_error_seconds"] >= 0
    assert set(status) == {"channels", "jobs", "worklist_steps", "reports", "studies", "images", "reconcile",
                           "archive_copies", "engine", "dicom", "fhir", "destinations", "archive_space", "attention"}
    assert status["archive_copies"] == {"missing": 0, "damaged": 0}
    assert status["studies"] == {"scheduled": 0, "unscheduled": 0}
    assert status["reconcile"] == {"pending": 0, "oldest_pending_seconds": None}


def test_status_text_says_its_study_counts_are_of_studies_with_stored_images(three_stored: EngineProcess) -> None:
    """``studies list`` lists studies known from MPPS or an order too; status counted only those with images
    under the bare heading "studies:" (new-user campaign: 1 scheduled in status, 2 in the list)."""
    assert "\nstudies with stored images: 0 scheduled, 0 unscheduled;" in three_stored.cli("status").stdout


def test_messages_list_json_rows_have_the_documented_fields(three_stored: EngineProcess) -> None:
    (row,) = cli_json(three_stored, "messages", "list", "--control-id", "LIST2")

    assert set(row) == {"id", "channel", "received_at", "status", "message_type", "control_id",
                        "patient_id", "accession_number", "ack_code", "error_code",
                        "error_location", "duplicate_count", "acknowledged_at"}
    assert (row["message_type"], row["patient_id"], row["ack_code"]) == ("ORM^O01", "P9", "AA")
    assert re.match(r"\d{4}-\d\d-\d\dT", row["received_at"])


def test_send_exits_non_zero_when_nobody_listens(
        engine_process: EngineProcess, tmp_path: Path) -> None:
    (tmp_path / "a.hl7").write_bytes(adt("SEND3"))

    port = free_port()
    result = engine_process.cli("send", f"127.0.0.1:{port}", str(tmp_path / "a.hl7"))

    assert result.returncode != 0
    assert f"\tERROR\tcannot connect to 127.0.0.1:{port}: Connection refused" in result.stdout


def test_messages_replay_of_an_unknown_id_exits_non_zero(three_stored: EngineProcess) -> None:
    result = three_stored.cli("messages", "replay", "999999")

    assert result.returncode != 0
    assert "999999: no such message" in result.stdout


def _cli_after(engine: EngineProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``radbridge COMMAND ... --config DIR``: the option after the subcommand, as the issue writes it."""
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args, "--config", str(engine.config_dir)],
                          cwd=ROOT, env=engine.env, capture_output=True, text=True, timeout=120)


def test_config_option_is_accepted_after_the_subcommand(engine_process: EngineProcess) -> None:
    write_channel(engine_process, "good", inbound_channel(free_port()))
    create_store(engine_process)

    checked = _cli_after(engine_process, "check-config")
    listed = _cli_after(engine_process, "messages", "list", "--json")

    assert checked.returncode == 0, checked.stderr
    assert str(engine_process.config_dir) in checked.stdout
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr


def test_run_with_a_mistyped_handler_prints_the_problem_and_no_traceback(engine_process: EngineProcess) -> None:
    port = free_port()
    write_channel(engine_process, "inbound", inbound_channel(port, "handlers: [patiens]\n"))

    result = _cli_after(engine_process, "run")

    path = engine_process.config_dir / "channels" / "inbound.yaml"
    assert result.returncode == 2
    assert f"{path}:7: handlers.0: unknown handler 'patiens' (did you mean 'patients'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_reports_every_problem_of_every_file_in_one_pass(engine_process: EngineProcess) -> None:
    write_channel(engine_process, "a", inbound_channel(free_port(), "handlers: [ordrs]\n").replace("inbound", "a"))
    write_channel(engine_process, "b", inbound_channel(free_port(), "acept: {}\n").replace("inbound", "b"))

    result = engine_process.cli("check-config")

    channels = engine_process.config_dir / "channels"
    assert result.returncode == 2
    assert f"{channels / 'a.yaml'}:7: handlers.0: unknown handler 'ordrs' (did you mean 'orders'?)" in result.stderr
    assert f"{channels / 'b.yaml'}:7: acept: unknown key 'acept' (did you mean 'accept'?)" in result.stderr


def test_run_on_a_port_in_use_says_so_and_exits_non_zero(engine_process: EngineProcess) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        write_channel(engine_process, "inbound", inbound_channel(port))

        result = _cli_after(engine_process, "run")

    assert result.returncode == 2
    assert f"source.port: cannot listen on 127.0.0.1:{port}: " in result.stderr
    assert "Traceback" not in result.stderr


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _all_parsers(child)
    return found


def test_every_option_has_help_text_without_markup() -> None:
    parsers = _all_parsers(cli_parser())
    assert len(parsers) > 10
    for parser in parsers:
        assert "``" not in (parser.description or ""), parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"
            assert "``" not in action.help and ":func:" not in action.help, action.help
        assert any("--config" in a.option_strings for a in parser._actions), parser.prog


def test_send_names_the_file_that_cannot_be_read(engine_process: EngineProcess, tmp_path: Path) -> None:
    result = engine_process.cli("send", f"127.0.0.1:{free_port()}", str(tmp_path / "missing.hl7"))

    assert result.returncode != 0
    assert f"\tERROR\tcannot read {tmp_path / 'missing.hl7'}: No such file or directory" in result.stdout


def test_messages_list_table_shows_patient_id_and_accession(three_stored: EngineProcess) -> None:
    result = three_stored.cli("messages", "list", "--control-id", "LIST2")

    header, row = result.stdout.splitlines()
    cells = dict(zip(header.split("\t"), row.split("\t"), strict=True))
    assert cells["patient_id"] == "P9" and "accession_number" in cells


def test_messages_show_escapes_control_bytes_but_json_stays_exact(inbound: EngineProcess, mllp_port: int) -> None:
    _send(mllp_port, adt("CTRL1", extra="\x1b[2J\x07"))
    (row,) = cli_json(inbound, "messages", "list", "--control-id", "CTRL1")

    text = inbound.cli("messages", "show", str(row["id"]))
    detail = cli_json(inbound, "messages", "show", str(row["id"]))

    assert text.returncode == 0, text.stderr
    # a value the message does not have is left out, never printed "None"
    assert "None" not in text.stdout and "\nerror_code:" not in text.stdout and "acknowledged_at" not in text.stdout
    assert detail["error_code"] is None
    assert "DOE^JANE\\x1b[2J\\x07" in text.stdout
    assert not set(text.stdout) & {"\x1b", "\x07", "\x0b", "\x1c", "\r"}
    assert "DOE^JANE\x1b[2J\x07" in detail["text"]
