"""PostgreSQL stopped and started again under a running engine (MLLP, FHIR API, two receive workers).

ARCHITECTURE "durable before acknowledged" and recovery without a restart: a message or image that
arrives after the database is back succeeds, even when nothing arrived while it was away (its first
transaction must not run on a connection that died with the old server), and the outage is told in
the log once per background task, not as a traceback every poll.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, EngineProcess, PostgresServer, free_port, wait_for_port
from tests.dicom.conftest import dcmtk_env
from tests.integration.conftest import adt, inbound_channel, send_all, write_channel, write_engine_yaml
from tests.integration.mllp_peer import MLLPPeer
from tests.integration.test_receive_workers import _associate, _instances, _start, children, serving_pid

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.timeout(180)]


def _engine(engine: EngineProcess, server: PostgresServer, mllp: int) -> int:
    """The engine on its own cluster with a channel on ``mllp``, the FHIR API and two receive workers;
    returns the DICOM port."""
    url = server.create_database("radbridge")
    write_channel(engine, "inbound", inbound_channel(mllp))
    port = _start(engine, f'database: {{url: "{url}"}}\nhttp: {{enabled: true, port: {free_port()}}}\n')
    wait_for_port(mllp)
    return port


def _outage(server: PostgresServer, seconds: float) -> None:
    server.stop()
    time.sleep(seconds)
    server.start()


def test_after_a_quiet_outage_the_first_order_and_the_first_image_on_each_worker_succeed(
        engine_process: EngineProcess, own_postgres: PostgresServer, corpus: Path) -> None:
    mllp = free_port()
    port = _engine(engine_process, own_postgres, mllp)
    assert engine_process.proc is not None
    images = _instances(corpus, 4)
    assocs: list[Any] = [_associate(port) for _ in range(2)]
    try:
        assert len({serving_pid(port, a, children(engine_process.proc.pid)) for a in assocs}) == 2
        assert [int(a.send_c_store(images[n]).Status) for n, a in enumerate(assocs)] == [0, 0]
        assert [a.code for a in send_all(mllp, [adt("BEFORE")])] == ["AA"]

        _outage(own_postgres, 3.0)  # nothing arrives meanwhile: 3 a.m.

        after = [int(a.send_c_store(images[2 + n]).Status) for n, a in enumerate(assocs)]
        (ack,) = send_all(mllp, [adt("AFTER")])
    finally:
        for assoc in assocs:
            if assoc.is_established:
                assoc.release()

    assert after == [0, 0]  # not 0xA700 for a connection that died with the old server
    assert ack.code == "AA"


def test_an_outage_is_logged_once_per_background_task_without_tracebacks(
        engine_process: EngineProcess, own_postgres: PostgresServer) -> None:
    mllp = free_port()
    _engine(engine_process, own_postgres, mllp)
    assert [a.code for a in send_all(mllp, [adt(f"WARM{n}") for n in range(3)])] == ["AA"] * 3
    time.sleep(1.0)  # the projector has projected them
    before = len(engine_process.log())

    _outage(own_postgres, 12.0)  # two runs of the 5-second jobs, a dozen projector rounds
    assert [a.code for a in send_all(mllp, [adt("BACK")], timeout=20)] == ["AA"]
    time.sleep(6.0)  # the projector and the jobs have found it back

    during = engine_process.log()[before:]
    assert "Traceback" not in during
    assert "could not skip" not in during and "skipped a change" not in during  # an outage is no bad row
    assert len(re.findall(r"FHIR projector: store unavailable", during)) <= 2
    assert len(re.findall(r"job reconcile-images: store unavailable", during)) == 1


def test_the_fhir_api_answers_503_while_the_database_is_away_and_200_when_it_is_back(
        engine_process: EngineProcess, own_postgres: PostgresServer) -> None:
    url = own_postgres.create_database("radbridge")
    http = free_port()
    write_engine_yaml(engine_process, f'database: {{url: "{url}"}}\n'
                                      f"http: {{enabled: true, port: {http}, auth: development-no-auth}}\n")
    engine_process.start(wait_port=http)
    search = f"http://127.0.0.1:{http}/fhir/Patient"
    assert httpx.get(search, timeout=20).status_code == 200
    before = len(engine_process.log())

    own_postgres.stop()
    try:
        away = httpx.get(search, timeout=20)
    finally:
        own_postgres.start()
    back = httpx.get(search, timeout=20)

    assert away.status_code == 503, away.text  # not 500 "internal error"
    assert away.headers["Retry-After"] and away.json()["issue"][0]["code"] == "transient"
    assert back.status_code == 200
    assert "Traceback" not in engine_process.log()[before:]


def test_every_session_of_the_engine_and_its_workers_is_named_in_pg_stat_activity(
        engine_process: EngineProcess, own_postgres: PostgresServer, corpus: Path) -> None:
    """A DBA who meets "too many clients" at 3 a.m. sees whose the sessions are (docs/deployment.md)."""
    mllp = free_port()
    port = _engine(engine_process, own_postgres, mllp)
    assert engine_process.proc is not None
    assocs: list[Any] = [_associate(port) for _ in range(2)]
    try:
        assert len({serving_pid(port, a, children(engine_process.proc.pid)) for a in assocs}) == 2
        images = _instances(corpus, 2)
        assert [int(a.send_c_store(images[n]).Status) for n, a in enumerate(assocs)] == [0, 0]
        assert [a.code for a in send_all(mllp, [adt("NAMED")])] == ["AA"]
        sessions = own_postgres.query("radbridge", "SELECT application_name FROM pg_stat_activity"
                                                   " WHERE datname = 'radbridge' AND pid <> pg_backend_pid()")
    finally:
        for assoc in assocs:
            assoc.release()

    assert {"radbridge", "radbridge receive worker 0", "radbridge receive worker 1"} <= set(sessions)
    assert set(sessions) <= {"radbridge", "radbridge receive worker 0", "radbridge receive worker 1"}


def test_status_while_the_database_is_away_says_the_engine_runs_and_the_database_cannot_be_reached(
        engine_process: EngineProcess, own_postgres: PostgresServer) -> None:
    mllp = free_port()
    url = own_postgres.create_database("radbridge")
    write_engine_yaml(engine_process, f'database: {{url: "{url}"}}\n')
    write_channel(engine_process, "inbound", inbound_channel(mllp))
    engine_process.start(wait_port=mllp)
    assert engine_process.proc is not None

    own_postgres.stop()
    try:
        away_json = engine_process.cli("status", "--json")
        away_text = engine_process.cli("status")
    finally:
        own_postgres.start()
    back = engine_process.cli("status", "--json")

    assert away_json.returncode == 1
    data = json.loads(away_json.stdout)  # a monitoring script still gets JSON
    assert data["engine"] == {"running": True, "pid": engine_process.proc.pid, "data_dir": str(engine_process.data_dir),
                              "source": "running engine"}
    assert data["database"]["reachable"] is False and "Connection refused" in data["database"]["error"]
    assert any(line.startswith("database: cannot be reached") for line in data["attention"])
    assert f"engine: running (pid {engine_process.proc.pid})" in away_text.stdout
    assert "database: cannot be reached" in away_text.stdout
    assert back.returncode == 0, back.stderr


def test_worklist_queries_and_the_outbox_say_the_store_is_away_in_one_line_not_a_traceback_each(
        engine_process: EngineProcess, own_postgres: PostgresServer, tmp_path: Path) -> None:
    peer = MLLPPeer(free_port())
    try:
        peer.up()
        mllp, dicom = free_port(), free_port()
        url = own_postgres.create_database("radbridge")
        write_engine_yaml(engine_process, f'database: {{url: "{url}"}}\n'
                                          f"dicom: {{port: {dicom}, ae_title: RADBRIDGE, receive_processes: 0}}\n"
                                          "outbox: {poll_interval_seconds: 0.2}\n")
        write_channel(engine_process, "inbound", inbound_channel(mllp, f"""\
            destinations:
              - name: downstream
                type: mllp
                host: 127.0.0.1
                port: {peer.port}
            """))
        engine_process.start(wait_port=mllp)
        wait_for_port(dicom)
        assert [a.code for a in send_all(mllp, [adt("FWD1")])] == ["AA"]
        peer.wait_for(1)
        before = len(engine_process.log())

        own_postgres.stop()
        try:
            queries = [_worklist_query(dicom) for _ in range(3)]
            time.sleep(3.0)  # 15 outbox polls
        finally:
            own_postgres.start()
        assert [a.code for a in send_all(mllp, [adt("FWD2")], timeout=20)] == ["AA"]
        assert [r.control_id for r in peer.wait_for(2)] == ["FWD1", "FWD2"]
    finally:
        peer.close()

    assert all("Failed: UnableToProcess" in q for q in queries), queries  # a failure status, as before
    during = engine_process.log()[before:]
    assert "Traceback" not in during
    assert during.count("worklist query from CT1 refused: the store is unavailable") == 3
    assert during.count("outbox downstream: store unavailable") == 1


def _worklist_query(port: int) -> str:
    """findscu -W's verbose output for a query on one key."""
    done = subprocess.run(["findscu", "-v", "-W", "-aet", "CT1", "-aec", "RADBRIDGE", "127.0.0.1", str(port),
                           "-k", "PatientName=", "-k", "AccessionNumber=ACC1"],
                          env=dcmtk_env(), capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def test_status_against_a_hung_server_fails_within_seconds_instead_of_waiting_for_ever(
        engine_process: EngineProcess, own_postgres: PostgresServer) -> None:
    """A postmaster that accepts TCP connections but never answers (a frozen host at 3 a.m.)."""
    url = own_postgres.create_database("radbridge")
    write_engine_yaml(engine_process, f'database: {{url: "{url}"}}\n')
    postmaster = int((own_postgres.datadir / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    try:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "engine.cli.main", "--config", str(engine_process.config_dir),
                               "status"], cwd=ROOT, env=engine_process.env, capture_output=True, text=True,
                              timeout=60)
        took = time.monotonic() - started
    finally:
        os.kill(postmaster, signal.SIGCONT)

    assert done.returncode == 1, done.stderr
    assert "database: cannot be reached" in done.stdout and "engine: not running" in done.stdout
    assert took < 30


def _cluster_pids(server: PostgresServer) -> list[int]:
    """The postmaster of ``server`` and its children (the backends serving open connections)."""
    postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True)
    return [postmaster, *(int(pid) for pid in children.stdout.split())]


def test_a_server_that_stops_answering_an_open_connection_fails_the_work_and_the_engine_recovers(
        engine_process: EngineProcess, own_postgres: PostgresServer, corpus: Path) -> None:
    """The whole cluster stopped (SIGSTOP: a frozen host whose kernel still answers TCP): the engine's open
    connections get no answer, and neither keepalives nor tcp_user_timeout end them (the data and the probes
    are acknowledged). Before, the order and the image behind them waited for ever; now each request is
    bounded (database.answer_timeout_seconds, here 3 s): AE and 0xA700, then AA and success once the server
    runs again, without restarting the engine."""
    mllp = free_port()
    url = own_postgres.create_database("radbridge")
    write_channel(engine_process, "inbound", inbound_channel(mllp))
    port = _start(engine_process, f'database: {{url: "{url}", answer_timeout_seconds: 3}}\n')
    wait_for_port(mllp)
    images = _instances(corpus, 2)
    assoc = _associate(port)
    try:
        assert [a.code for a in send_all(mllp, [adt("HUNG1")])] == ["AA"]
        frozen = _cluster_pids(own_postgres)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            status = int(assoc.send_c_store(images[0]).Status)
            (ack,) = send_all(mllp, [adt("HUNG2")], timeout=90)
            took = time.monotonic() - started
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert status == 0xA700
        assert ack.code == "AE", ack.raw
        assert took < 60
        assert int(assoc.send_c_store(images[1]).Status) == 0
        assert [a.code for a in send_all(mllp, [adt("HUNG3")], timeout=60)] == ["AA"]
    finally:
        if assoc.is_established:
            assoc.release()
    assert engine_process.proc is not None and engine_process.proc.poll() is None
