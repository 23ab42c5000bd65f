"""The pid file: a live engine refuses a second one; a stale file is replaced with a log line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import AlreadyRunning
from engine.pidfile import PidFile
from tests.conftest import ROOT

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from engine.pidfile import PidFile
    pid_file = PidFile.acquire(Path(sys.argv[1]))
    pid_file.publish()
    print("ready", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``tmp_path/radbridge.pid`` as a running engine does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "radbridge.pid")], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_a_live_engine_makes_a_second_one_refuse_naming_its_pid(tmp_path: Path,
                                                              holder: subprocess.Popen[str]) -> None:
    with pytest.raises(AlreadyRunning, match=f"pid {holder.pid} holds"):
        PidFile.acquire(tmp_path / "radbridge.pid")

    assert (tmp_path / "radbridge.pid").read_text().strip() == str(holder.pid)


def test_the_pid_file_is_free_once_its_engine_is_killed(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait(timeout=10)

    pid_file = PidFile.acquire(tmp_path / "radbridge.pid")
    pid_file.release()


def test_a_pid_that_is_not_running_is_replaced_with_a_warning(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    dead = _dead_pid()
    (tmp_path / "radbridge.pid").write_text(f"{dead}\n")

    with caplog.at_level(logging.WARNING, logger="engine.pidfile"):
        pid_file = PidFile.acquire(tmp_path / "radbridge.pid")
    try:
        assert f"names pid {dead}, which is not running; replacing it" in caplog.text
        pid_file.publish()
        assert (tmp_path / "radbridge.pid").read_text() == f"{os.getpid()}\n"
    finally:
        pid_file.release()


def test_a_pid_now_used_by_another_program_is_replaced_with_a_warning(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "radbridge.pid").write_text(f"{other.pid}\n")
        with caplog.at_level(logging.WARNING, logger="engine.pidfile"):
            PidFile.acquire(tmp_path / "radbridge.pid").release()
    finally:
        other.kill()
        other.wait(timeout=10)

    assert f"names pid {other.pid}, which is running but is not a radbridge engine" in caplog.text


def test_release_removes_the_file_and_a_new_engine_starts_clean(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    first = PidFile.acquire(tmp_path / "radbridge.pid")
    first.publish()
    first.release()
    assert not (tmp_path / "radbridge.pid").exists()

    with caplog.at_level(logging.WARNING, logger="engine.pidfile"):
        PidFile.acquire(tmp_path / "radbridge.pid").release()
    assert caplog.records == []


def test_the_pid_file_is_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        pid_file = PidFile.acquire(tmp_path / "radbridge.pid")
    finally:
        os.umask(old)
    try:
        assert (tmp_path / "radbridge.pid").stat().st_mode & 0o077 == 0
    finally:
        pid_file.release()
