"""An engine that starts with the archive's file system under archive.min_free_bytes says so at start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.archive.service import checked_archive
from engine.archive.spool_budget import free_bytes
from engine.config import load_config


def _config(tmp_path: Path, reserve: int) -> Path:
    (tmp_path / "config" / "channels").mkdir(parents=True)
    (tmp_path / "config" / "engine.yaml").write_text(
        f"data_dir: {tmp_path / 'var'}\narchive: {{primary: {tmp_path / 'archive'}, min_free_bytes: {reserve}}}\n")
    return tmp_path / "config"


def test_an_archive_under_its_free_space_reserve_is_a_warning_at_start(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """It started quietly on an 8 MiB disk with a 1 GiB reserve; the first refused image was the first word
    (new-user campaign)."""
    reserve = free_bytes(tmp_path) + (1 << 40)
    with caplog.at_level(logging.WARNING, logger="engine.archive.service"):
        checked_archive(load_config(_config(tmp_path, reserve)))
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"archive: the spool's file system ({tmp_path / 'archive'}) has ")
    assert "every new image is refused (0xA700)" in line


def test_enough_free_space_says_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.archive.service"):
        checked_archive(load_config(_config(tmp_path, 1 << 20)))
    assert caplog.records == []
