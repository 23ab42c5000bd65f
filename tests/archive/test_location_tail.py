"""Staging a body given as new leading bytes + the tail of another file (a coerced image's header and pixels)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from engine.archive import location as location_module
from engine.archive.location import ArchiveLocation, FileTail
from engine.errors import ArchiveUnavailable


def _location(tmp_path: Path) -> ArchiveLocation:
    loc = ArchiveLocation("primary", tmp_path / "archive")
    loc.prepare()
    return loc


def _source(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "spool"
    path.write_bytes(os.urandom(size))
    return path


@pytest.mark.parametrize("size", [100, (1 << 20) + 3001, 3 * (1 << 20) + 7])
def test_a_file_tail_is_staged_and_hashed_as_the_same_bytes_read_as_a_stream(tmp_path: Path, size: int) -> None:
    loc, source = _location(tmp_path), _source(tmp_path, size)
    data = source.read_bytes()
    with source.open("rb") as f:
        staged = loc.stage(b"META", FileTail(b"NEW HEADER", f, 77))
    body = b"NEW HEADER" + data[77:]
    assert staged.path.read_bytes() == b"META" + body
    assert (staged.size, staged.sha256) == (len(body), hashlib.sha256(body).hexdigest())


def test_without_a_kernel_copy_the_tail_is_written_from_the_buffer(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(location_module.os, "copy_file_range", unsupported)
    loc, source = _location(tmp_path), _source(tmp_path, (1 << 20) + 10)
    with source.open("rb") as f:
        staged = loc.stage(b"M", FileTail(b"H", f, 10))
    assert staged.path.read_bytes() == b"M" + b"H" + source.read_bytes()[10:]


def test_a_failing_copy_removes_the_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(location_module.os, "copy_file_range", full)
    loc, source = _location(tmp_path), _source(tmp_path, 5000)
    with source.open("rb") as f, pytest.raises(ArchiveUnavailable, match="ENOSPC"):
        loc.stage(b"M", FileTail(b"H", f, 10))
    assert list(loc.incoming.iterdir()) == []
