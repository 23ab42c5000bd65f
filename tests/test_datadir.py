"""Owner-only data directory: created 0700, too-open modes tightened with a warning, never widened."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from engine.datadir import prepare_data_dir, restrict


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_data_dir_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        prepare_data_dir(tmp_path / "new" / "var")
    finally:
        os.umask(old)

    assert mode(tmp_path / "new" / "var") == 0o700


def test_existing_open_modes_are_tightened_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "var"
    (data / "archive").mkdir(parents=True)
    (data / "radbridge.db").write_bytes(b"")
    os.chmod(data, 0o755)
    os.chmod(data / "archive", 0o775)
    os.chmod(data / "radbridge.db", 0o644)

    with caplog.at_level(logging.WARNING, logger="engine.datadir"):
        prepare_data_dir(data)

    assert (mode(data), mode(data / "archive"), mode(data / "radbridge.db")) == (0o700, 0o700, 0o600)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{data / 'radbridge.db'} was mode 644 (open to group/others); changed to 600" in warned
    assert len(warned) == 3


def test_owner_bits_are_never_added(tmp_path: Path) -> None:
    path = tmp_path / "readonly"
    path.write_bytes(b"")
    os.chmod(path, 0o444)

    assert restrict(path) is True
    assert mode(path) == 0o400


def test_an_owner_only_file_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    os.chmod(path, 0o600)

    with caplog.at_level(logging.DEBUG):
        assert restrict(path) is False
    assert caplog.records == []
