"""``radbridge studies export``: the exported files carry patient data and are owner-only."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.cli import export


class _Db:
    """What export_study uses of a Database: a read that returns the instances, an audited write."""

    def __init__(self, found: list[Any]) -> None:
        self.found = found
        self.audited: list[Any] = []
        self.writer = SimpleNamespace(call=self.audited.append)

    def read(self, fn: Any) -> list[Any]:
        return self.found


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual interactive umask (022): what the operator's shell gives the CLI."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_exported_files_and_the_directories_made_for_them_are_owner_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_umask: None) -> None:
    monkeypatch.setattr(export, "copy_current", lambda archive, inst, out: out.write(b"DICM") and "primary")
    inst = SimpleNamespace(series_instance_uid="1.2.3.1", sop_instance_uid="1.2.3.1.1")
    out = tmp_path / "handover" / "study"  # neither exists yet

    written, problems = export.export_study(SimpleNamespace(), _Db([inst]), "1.2.3", out)

    assert (written, problems) == (1, [])
    exported = out / "1.2.3.1" / "1.2.3.1.1.dcm"
    assert exported.read_bytes() == b"DICM"
    assert _mode(exported) == 0o600
    assert _mode(out / "1.2.3.1") == 0o700
    assert _mode(out) == 0o700


def test_an_existing_target_directory_keeps_its_mode_and_a_stale_part_file_is_made_owner_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_umask: None) -> None:
    monkeypatch.setattr(export, "copy_current", lambda archive, inst, out: out.write(b"DICM") and "primary")
    inst = SimpleNamespace(series_instance_uid="1.2.3.1", sop_instance_uid="1.2.3.1.1")
    out = tmp_path / "shared"
    out.mkdir(mode=0o755)
    (out / "1.2.3.1").mkdir(mode=0o700)
    stale = out / "1.2.3.1" / ".1.2.3.1.1.dcm.part"  # an export killed half-way
    stale.write_bytes(b"old")
    stale.chmod(0o644)

    assert export.export_study(SimpleNamespace(), _Db([inst]), "1.2.3", out) == (1, [])

    assert _mode(out) == 0o755
    assert _mode(out / "1.2.3.1" / "1.2.3.1.1.dcm") == 0o600
