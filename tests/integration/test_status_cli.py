"""``radbridge status`` tells a new user where everything listens, what is owed to whom, and what needs
attention; ``radbridge reload`` signals only a running engine (real engine process, real MLLP client)."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import EngineProcess, free_port
from tests.integration.conftest import adt, create_store, send_all, write_channel, write_engine_yaml

pytestmark = pytest.mark.timeout(120)


def _status(engine: EngineProcess) -> dict[str, Any]:
    done = engine.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _order(control_id: str) -> bytes:
    return (f"MSH|^~\\&|RIS|HOSP|RADBRIDGE|RAD|20240101120000||ORM^O01|{control_id}|P|2.5.1\r"
            "PID|1||P9^^^HOSP^MR||DOE^JOHN\rORC|NW|PL1\rOBR|1|PL1||CT^CT HEAD\r").encode()



def _running_status(engine: EngineProcess) -> dict[str, Any]:
    """``status --json`` once it reads the running engine's serving file (within 30 s)."""
    deadline = time.monotonic() + 30
    while (data := _status(engine))["engine"]["source"] != "running engine":
        assert time.monotonic() < deadline, data
        time.sleep(0.2)
    return data

def test_status_shows_listeners_dicom_fhir_backlog_per_destination_and_what_needs_attention(
        engine_process: EngineProcess) -> None:
    mllp, idle, dicom, http, dead = free_port(), free_port(), free_port(), free_port(), free_port()
    write_engine_yaml(engine_process, f"""\
        dicom: {{ae_title: RB_TEST, port: {dicom}}}
        http: {{enabled: true, port: {http}}}
        outbox: {{poll_interval_seconds: 0.2}}
        """)
    write_channel(engine_process, "adt-in", f"""\
        name: adt-in
        source: {{type: mllp, port: {mllp}}}
        accept: {{message_types: ["ADT^*"]}}
        destinations:
          - name: downstream
            type: mllp
            host: 127.0.0.1
            port: {dead}
            retry: {{initial_seconds: 0.1, max_attempts: 1}}
        """)
    write_channel(engine_process, "quiet", f"name: quiet\nsource: {{type: mllp, port: {idle}}}\n")
    engine_process.start(wait_port=mllp)
    try:
        acks = send_all(mllp, [adt("A1"), _order("O1")])
        assert [a.code for a in acks] == ["AA", "AR"]
        deadline = time.monotonic() + 30
        while _status(engine_process)["destinations"]["downstream"]["dead_letters"] == 0:
            assert time.monotonic() < deadline, engine_process.log()
            time.sleep(0.3)
        data = _status(engine_process)
        text = engine_process.cli("status").stdout
    finally:
        engine_process.stop()

    assert data["engine"]["running"] is True and data["engine"]["pid"] == engine_process.proc.pid
    assert data["dicom"] == {"ae_title": "RB_TEST", "listen": f"127.0.0.1:{dicom}", "tls": False,
                             "receive_processes": 2}
    assert data["fhir"] == {"url": f"http://127.0.0.1:{http}/fhir", "auth": "smart"}
    assert data["channels"]["quiet"]["listen"] == f"127.0.0.1:{idle}"  # configured, nothing received yet
    assert data["channels"]["quiet"]["received"] == 0
    assert (data["channels"]["adt-in"]["received"], data["channels"]["adt-in"]["errors"]) == (2, 1)
    assert data["destinations"]["downstream"] == {
        "target": f"127.0.0.1:{dead}", "queued": 0, "oldest_queued_seconds": None, "dead_letters": 1}
    assert data["attention"][0].startswith("channel adt-in: 1 message(s) answered AE/AR, the newest ")
    assert data["attention"][1:] == [
        "destination downstream: 1 dead letter(s): radbridge outbox list --destination downstream --status ERROR;"
        " once the cause is fixed: radbridge outbox replay --destination downstream",
    ]
    assert f"DICOM: AE title RB_TEST on 127.0.0.1:{dicom}" in text
    assert f"FHIR API: http://127.0.0.1:{http}/fhir (auth: smart)" in text
    assert f"quiet\t127.0.0.1:{idle}\t0\t" in text
    assert f"downstream\t127.0.0.1:{dead}\t0\t-\t1" in text  # nothing queued: "-", not Python's "None"
    assert "None" not in text


def test_a_stopped_engine_is_not_running_and_reload_signals_no_stranger(engine_process: EngineProcess) -> None:
    """A pid file left by an engine that died names a pid that may now be any process's."""
    create_store(engine_process)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (engine_process.data_dir / "radbridge.pid").write_text(f"{stranger.pid}\n")
        assert _status(engine_process)["engine"] == {"running": False, "pid": None,
                                                     "data_dir": str(engine_process.data_dir),
                                                     "source": "configuration"}
        done = engine_process.cli("reload")
        time.sleep(0.2)
        assert stranger.poll() is None  # not hung up
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith("radbridge reload: no running engine")
    finally:
        stranger.kill()
        stranger.wait()


def test_status_in_a_shell_without_the_engine_s_environment_shows_what_the_engine_bound(
        engine_process: EngineProcess) -> None:
    """The engine started by a service manager with its own RADBRIDGE_* ports; the operator's shell has none
    (sudo drops them). status said "running" beside the shell's ports (new-user campaign). A channel on port
    0 shows the port it got, not "a free port chosen at start"."""
    mllp, dicom = free_port(), free_port()
    write_engine_yaml(engine_process, 'dicom: {ae_title: RB_TEST, port: "${RADBRIDGE_TEST_DICOM_PORT:-11112}"}\n')
    write_channel(engine_process, "adt-in", f"name: adt-in\nsource: {{type: mllp, port: {mllp}}}\n")
    write_channel(engine_process, "any-port", "name: any-port\nsource: {type: mllp, port: 0}\n")
    engine_process.env["RADBRIDGE_TEST_DICOM_PORT"] = str(dicom)
    engine_process.start(wait_port=dicom)
    try:
        del engine_process.env["RADBRIDGE_TEST_DICOM_PORT"]  # the operator's shell
        data = _running_status(engine_process)  # the DICOM port opens before the channels: until all listen
        text = engine_process.cli("status").stdout
    finally:
        engine_process.stop()
    after = _status(engine_process)

    assert data["engine"]["source"] == "running engine"
    assert data["dicom"]["listen"] == f"127.0.0.1:{dicom}"  # not 11112
    bound = data["channels"]["any-port"]["listen"]
    assert bound.startswith("127.0.0.1:") and bound.split(":")[1].isdigit() and bound != "127.0.0.1:0", bound
    assert data["channels"]["adt-in"]["listen"] == f"127.0.0.1:{mllp}"
    assert f"on 127.0.0.1:{dicom}" in text
    assert after["engine"] == {"running": False, "pid": None, "data_dir": str(engine_process.data_dir),
                               "source": "configuration"}
    assert after["dicom"]["listen"] == "127.0.0.1:11112"  # stopped: the shell's configuration
    assert not (engine_process.data_dir / "radbridge.serving.json").exists()


def test_status_names_the_ehr_the_running_engine_sends_reports_to_not_this_shell_s(
        engine_process: EngineProcess) -> None:
    """The engine started with RADBRIDGE_EHR_MLLP set, the operator's shell without it: the destination table
    said ``ehr 127.0.0.1:PORT`` with its queue, and the line below it ``ORU^R01 out: ehr off`` (new-user
    campaign): the receiver's target came from this shell's configuration, not from the engine."""
    mllp, ehr = free_port(), free_port()
    write_engine_yaml(engine_process, "reports:\n  receivers:\n    - name: ehr\n      mapping: report-to-oru\n"
                                      '      mllp: "${RADBRIDGE_TEST_EHR_MLLP:-}"\n')
    write_channel(engine_process, "adt-in", f"name: adt-in\nsource: {{type: mllp, port: {mllp}}}\n")
    engine_process.env["RADBRIDGE_TEST_EHR_MLLP"] = f"127.0.0.1:{ehr}"
    engine_process.start(wait_port=mllp)
    try:
        del engine_process.env["RADBRIDGE_TEST_EHR_MLLP"]  # the operator's shell
        data = _running_status(engine_process)
        text = engine_process.cli("status").stdout
    finally:
        engine_process.stop()
    after = _status(engine_process)

    assert data["destinations"]["ehr"]["target"] == f"127.0.0.1:{ehr}"
    assert data["reports"]["receivers"] == {"ehr": f"127.0.0.1:{ehr}"}
    assert f"ORU^R01 out: ehr 127.0.0.1:{ehr}" in text
    assert after["reports"]["receivers"] == {"ehr": "off"}  # stopped: the shell's configuration
