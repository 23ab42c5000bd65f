"""A reader that stops early (``radbridge status | head -3``) ends a command quietly, as it ends a
Unix tool: no BrokenPipeError traceback, no "Exception ignored" line, the shell's SIGPIPE status."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.cli.main import CLOSED_PIPE
from tests.conftest import ROOT, EngineProcess
from tests.integration.conftest import create_store

pytestmark = pytest.mark.timeout(120)


def _reader_gone(engine: EngineProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with its stdout a pipe whose reading end is already closed."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "engine.cli.main", "--config", str(engine.config_dir), *args],
                              cwd=ROOT, env=engine.env, stdout=write, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["messages", "list"],
                                     ["schema", "engine"], ["messages", "replay", "1"]])
def test_a_closed_pipe_ends_the_command_quietly(engine_process: EngineProcess, command: list[str]) -> None:
    create_store(engine_process)
    done = _reader_gone(engine_process, *command)
    assert (done.returncode, done.stderr) == (CLOSED_PIPE, b"")


def test_help_into_a_closed_pipe_is_quiet(engine_process: EngineProcess) -> None:
    """argparse drops the failed write of its help itself (and exits 0); nothing may follow at exit."""
    assert _reader_gone(engine_process, "--help").stderr == b""


def test_status_into_head_prints_its_first_lines_and_nothing_else(engine_process: EngineProcess) -> None:
    """The shell's own pipe: the schema (52 kB, more than a pipe holds) and status."""
    create_store(engine_process)
    cli = f"{sys.executable} -m engine.cli.main --config {engine_process.config_dir}"
    for command, first in (("schema engine", "{"), ("status", "engine: not running")):
        done = subprocess.run(["bash", "-c", f"set -o pipefail; {cli} {command} | head -3"], cwd=ROOT,
                              env=engine_process.env, capture_output=True, text=True, timeout=60)
        assert done.stderr == "" and done.returncode in (0, CLOSED_PIPE), done.stderr
        assert len(done.stdout.splitlines()) == 3 and done.stdout.startswith(first)
