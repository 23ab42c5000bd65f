"""``radbridge run`` keeps its data directory owner-only and one engine per directory; the CLI audits reads."""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT, EngineProcess
from tests.integration.conftest import adt, inbound_channel, send_all, sqlite_rows, write_channel

pytestmark = pytest.mark.timeout(120)


def mode(path: os.PathLike[str]) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def run_second(engine: EngineProcess) -> subprocess.CompletedProcess[str]:
    """Another ``radbridge run`` on the same configuration, expected to refuse at once."""
    return subprocess.run([sys.executable, "-m", "engine.cli.main", "--config", str(engine.config_dir), "run"],
                          cwd=ROOT, env=engine.env, capture_output=True, text=True, timeout=60)


def test_the_data_dir_and_database_files_become_owner_only(inbound: EngineProcess, mllp_port: int) -> None:
    assert [a.code for a in send_all(mllp_port, [adt("PERM1")])] == ["AA"]
    data = inbound.data_dir

    assert mode(data) == 0o700  # the fixture made it 0755: tightened at start
    for name in ("radbridge.db", "radbridge.db-wal", "radbridge.db-shm", "radbridge.pid", "engine.log"):
        assert mode(data / name) == 0o600, name
    assert f"{data} was mode 755 (open to group/others); changed to 700" in inbound.log()


def test_a_second_engine_on_the_same_data_dir_refuses_naming_the_first(inbound: EngineProcess) -> None:
    assert inbound.proc is not None
    first = inbound.proc.pid
    assert (inbound.data_dir / "radbridge.pid").read_text().strip() == str(first)

    second = run_second(inbound)

    assert second.returncode == 1
    assert f"radbridge is already running for data directory {inbound.data_dir} (pid {first} holds" in second.stderr
    assert inbound.proc.poll() is None
    assert (inbound.data_dir / "radbridge.pid").read_text().strip() == str(first)


def test_a_stale_pid_file_after_kill_9_is_replaced_with_a_log_line(inbound: EngineProcess, mllp_port: int) -> None:
    assert inbound.proc is not None
    killed = inbound.proc.pid
    inbound.kill()
    assert (inbound.data_dir / "radbridge.pid").read_text().strip() == str(killed)

    inbound.start(wait_port=mllp_port)

    assert inbound.proc is not None
    assert f"names pid {killed}, which is not running; replacing it" in inbound.log()
    assert [a.code for a in send_all(mllp_port, [adt("STALE1")])] == ["AA"]
    assert (inbound.data_dir / "radbridge.pid").read_text().strip() == str(inbound.proc.pid)


def test_reload_still_reads_the_pid(inbound: EngineProcess) -> None:
    result = inbound.cli("reload")

    assert result.returncode == 0, result.stderr
    assert inbound.proc is not None and f"sent SIGHUP to {inbound.proc.pid}" in result.stdout


def _audit(engine: EngineProcess) -> list[tuple[str, str, str, str, dict[str, object]]]:
    rows = sqlite_rows(engine.data_dir / "radbridge.db",
                       "SELECT actor, action, object_type, object_id, detail FROM audit_events ORDER BY id")
    return [(actor, action, kind, key, json.loads(detail)) for actor, action, kind, key, detail in rows]


def test_listing_by_patient_or_accession_and_showing_are_audited_as_the_real_user(
        inbound: EngineProcess, mllp_port: int) -> None:
    assert [a.code for a in send_all(mllp_port, [adt("AUD1", patient_id="PAUD7")])] == ["AA"]
    inbound.env.update(RADBRIDGE_ACTOR="mallory", USER="mallory", LOGNAME="mallory")
    me = pwd.getpwuid(os.geteuid()).pw_name

    (row,) = json.loads(inbound.cli("messages", "list", "--patient-id", "PAUD7", "--json").stdout)
    assert inbound.cli("messages", "list", "--accession", "NOSUCH", "--json").returncode == 0
    assert inbound.cli("messages", "list").returncode == 0
    assert inbound.cli("messages", "show", str(row["id"])).returncode == 0

    events = _audit(inbound)
    assert [(actor, action, kind, key) for actor, action, kind, key, _ in events] == [
        (me, "message.list", "patient", "PAUD7"),
        (me, "message.list", "accession", "NOSUCH"),
        (me, "message.list", "query", ""),
        (me, "message.show", "message", str(row["id"])),
    ]
    detail = events[0][4]
    assert detail["message_ids"] == [row["id"]]
    assert detail["query"] == {"patient_id": "PAUD7", "limit": 100}
    assert isinstance(detail["pid"], int) and detail["host"] and detail["uid"] == os.geteuid()
    assert events[1][4]["message_ids"] == []


def test_a_start_failure_is_logged_through_the_formatter(engine_process: EngineProcess) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        write_channel(engine_process, "inbound", inbound_channel(taken.getsockname()[1]))

        result = run_second(engine_process)

    # A port in use is a configuration problem since issue #11: listed at its line, exit 2.
    assert result.returncode == 2
    assert "source.port: cannot listen on 127.0.0.1:" in result.stderr
    assert "address already in use" in result.stderr and "Traceback" not in result.stderr
    assert not (engine_process.data_dir / "radbridge.pid").exists()


def test_a_data_dir_that_cannot_be_created_is_one_located_line(engine_process: EngineProcess, tmp_path) -> None:
    (tmp_path / "a-file").write_text("")
    engine_yaml = engine_process.config_dir / "engine.yaml"
    engine_yaml.write_text(f"data_dir: {tmp_path / 'a-file' / 'var'}\ndicom: {{enabled: false}}\n")

    result = run_second(engine_process)

    assert result.returncode == 2
    assert f"{engine_yaml}:1: data_dir: cannot use {tmp_path / 'a-file' / 'var'}: Not a directory" in result.stderr
    assert "Traceback" not in result.stderr
