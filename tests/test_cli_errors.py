"""Mistakes a new user makes on the command line get one clear line, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli.main import main
from tests.conftest import free_port


def _config(tmp: Path, database: str = "") -> Path:
    (tmp / "config" / "channels").mkdir(parents=True)
    (tmp / "config" / "engine.yaml").write_text(
        f"data_dir: {tmp / 'var'}\ndicom: {{enabled: false}}\ndatabase: {{url: '{database}'}}\n")
    return tmp / "config"


def test_a_time_that_is_not_iso_8601_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(_config(tmp_path)), "messages", "list", "--since", "yesterday"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == ("radbridge messages list: error: argument --since: 'yesterday' is not an"
                                    " ISO 8601 time, e.g. 2026-11-22T08:00")


def test_a_mistyped_message_status_is_a_usage_error_not_an_empty_listing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(_config(tmp_path)), "messages", "list", "--status", "EROR"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "argument --status: invalid choice: 'EROR'" in err.splitlines()[-1]
    assert "'UNCHANGED'" in err.splitlines()[-1]


def test_an_unreachable_database_is_one_line(tmp_path, capsys):
    port = free_port()  # nobody listens there
    config = _config(tmp_path, f"postgresql+psycopg://radbridge@127.0.0.1:{port}/radbridge")
    assert main(["--config", str(config), "status"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("radbridge status: cannot use the database: connection failed:")
    assert f"port {port} failed" in err


def test_status_without_the_database_still_names_each_channel_s_listener(tmp_path, capsys):
    """README: with the database unreachable, status shows the engine and its listeners."""
    port = free_port()  # nobody listens there
    config = _config(tmp_path, f"postgresql+psycopg://radbridge@127.0.0.1:{port}/radbridge")
    (config / "channels" / "orders.yaml").write_text("name: orders\nsource: {type: mllp, port: 12575}\n")
    assert main(["--config", str(config), "status"]) == 1
    assert "orders\t127.0.0.1:12575" in capsys.readouterr().out.splitlines()
    assert main(["--config", str(config), "status", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["channels"] == {"orders": {"listen": "127.0.0.1:12575"}}


def test_run_from_another_directory_says_where_it_looked_and_how_to_point_at_the_configuration(
        tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./config here: a new user in the wrong directory
    monkeypatch.delenv("RADBRIDGE_CONFIG", raising=False)
    code = main(["status"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"looked for {tmp_path / 'config'}" in err
    assert "--config DIR" in err and "RADBRIDGE_CONFIG" in err


def test_send_shows_the_ack_text_unescaped() -> None:
    """The ERR/MSA text is HL7-escaped on the wire; `radbridge send` prints it for a person."""
    from engine.cli.send import ack_result

    ack = ("MSH|^~\\&|RB|NORTH|RIS|NORTH|20261205||ACK^O01^ACK|A1|P|2.5.1\r"
           "MSA|AR|M1\rERR|||200^Unsupported message type^HL70357|E||||message type ORU\\S\\R01 is not accepted\r")
    assert ack_result(ack.encode(), "h:1") == ("AR", "message type ORU^R01 is not accepted")
    assert ack_result(b"MSH|^~\\&|RB\r", "h:1") == ("NOACK", "h:1: answer has no MSA segment")


@pytest.mark.parametrize("command", [["status"], ["messages", "list"], ["messages", "show", "1"],
                                     ["messages", "replay", "1"], ["studies", "list"], ["outbox", "list"],
                                     ["clients", "list"], ["archive", "verify"]])
def test_a_command_other_than_run_creates_no_data_directory(tmp_path, capsys, command):
    config = _config(tmp_path)
    assert main(["--config", str(config), *command]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"radbridge {' '.join(command[:2]).removesuffix(' 1')}: the data directory"
                                f" {tmp_path / 'var'} does not exist: `radbridge run` (or `make run`) creates it,"
                                " mode 0700, with its database"]
    assert list(tmp_path.iterdir()) == [tmp_path / "config"]


def test_a_data_directory_without_a_database_stays_empty(tmp_path, capsys):
    config = _config(tmp_path)
    (tmp_path / "var").mkdir()
    assert main(["--config", str(config), "status"]) == 1
    assert capsys.readouterr().err == (f"radbridge status: no database radbridge.db in {tmp_path / 'var'}:"
                                       " `radbridge run` (or `make run`) creates it\n")
    assert list((tmp_path / "var").iterdir()) == []


def test_registering_a_client_before_the_first_run_creates_the_store_owner_only(tmp_path, capsys):
    config = _config(tmp_path)
    assert main(["--config", str(config), "clients", "add", "ehr", "--scope", "system/*.rs", "--secret"]) == 0
    assert (tmp_path / "var").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "var" / "radbridge.db").stat().st_mode & 0o777 == 0o600
    capsys.readouterr()
    assert main(["--config", str(config), "clients", "list"]) == 0
    assert "ehr" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["verify", "restore"])
def test_archive_verify_of_a_study_with_no_stored_instance_says_so(tmp_path, capsys, action):
    """A mistyped UID said "0 instance(s) checked, 0 problem(s)" with exit status 0 (new-user campaign),
    where studies show and studies export say "no study" / "no stored instances" with exit status 1."""
    config = _config(tmp_path)
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "archive", action, "--study", "1.2.3.4"]) == 1
    out = capsys.readouterr()
    assert out.err == "no stored instances for study 1.2.3.4\n" and out.out == ""
    assert main(["--config", str(config), "archive", action]) == 0  # the whole (empty) archive is fine


def test_the_help_says_what_the_exit_statuses_mean(capsys):
    """0/1/2 were a convention no help text or document stated (new-user campaign)."""
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exc.value.code == 0
    assert "exit status: 0 done; 1 the command ran but found something wrong or unknown" in out
    assert "2 a usage error or an invalid configuration file" in out and "docs/operations.md" in out
