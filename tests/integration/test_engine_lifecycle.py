"""Stopping ``radbridge run`` as a user does: Ctrl-C in its terminal (SIGINT to the whole foreground
process group: the engine and its DICOM receive workers at once) or a service manager's SIGTERM to
the group. The engine says it stopped, exits 0, and leaves no worker process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, EngineProcess, free_port, wait_for_port
from tests.integration.forward_peer import wait_until
from tests.integration.test_receive_workers import _alive, children

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_process_group_stops_the_engine_and_every_worker(
        engine_process: EngineProcess, sig: signal.Signals) -> None:
    port = free_port()
    (engine_process.config_dir / "engine.yaml").write_text(
        f"data_dir: {engine_process.data_dir}\ndicom: {{port: {port}}}\n")  # receive_processes: the default, 2
    log = engine_process.data_dir / "engine.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "--config", str(engine_process.config_dir),
                                 "run"], cwd=ROOT, env=engine_process.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group, as a terminal's foreground job
    try:
        wait_for_port(port, proc=proc)
        wait_until(lambda: len(children(proc.pid)) == 2, what="the receive workers")
        # The signal handlers are installed once every listener has started (the log says "running"):
        # before that a signal ends the process as Python's defaults do (130, or killed by SIGTERM).
        wait_until(lambda: b"radbridge running" in log.read_bytes(), timeout=60, what="the engine to be running")
        workers = children(proc.pid)
        status = engine_process.cli("status")
        assert f"DICOM: AE title RADBRIDGE on 127.0.0.1:{port}; associations in 2 receive worker process(es)" \
            in status.stdout, status.stdout

        os.killpg(proc.pid, sig)

        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=10, what="every worker to be gone")
    text = log.read_text()
    assert text.rstrip().splitlines()[-1].endswith("INFO engine.runtime: radbridge stopped"), text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert engine_process.cli("status").stdout.startswith("engine: not running")
