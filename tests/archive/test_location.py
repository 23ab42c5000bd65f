"""Durable placement of files in a storage location: temp name, fsync, no-clobber link, cleanup."""

from __future__ import annotations

import hashlib
import os
import stat
from io import BytesIO
from pathlib import Path

import pytest

from engine.archive.location import ArchiveLocation
from engine.errors import ArchiveUnavailable


def _location(tmp_path: Path) -> ArchiveLocation:
    loc = ArchiveLocation("primary", tmp_path / "archive")
    loc.prepare()
    return loc


def test_stage_writes_head_and_body_and_hashes_the_body(tmp_path: Path) -> None:
    loc = _location(tmp_path)
    staged = loc.stage(b"HEAD", BytesIO(b"body" * 1000))
    assert staged.path.read_bytes() == b"HEAD" + b"body" * 1000
    assert (staged.size, staged.sha256) == (4000, hashlib.sha256(b"body" * 1000).hexdigest())
    assert staged.path.parent == loc.incoming


def test_place_links_into_new_owner_only_directories_and_drops_the_temp(tmp_path: Path) -> None:
    loc = _location(tmp_path)
    staged = loc.stage(b"", BytesIO(b"x"))
    assert loc.place(staged, ["1.2/1.2.3/1.2.3.4.dcm"]) == ("1.2/1.2.3/1.2.3.4.dcm", True)
    final = loc.path("1.2/1.2.3/1.2.3.4.dcm")
    assert final.read_bytes() == b"x" and not staged.path.exists()
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert stat.S_IMODE(final.parent.stat().st_mode) == 0o700


def test_place_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    loc = _location(tmp_path)
    loc.place(loc.stage(b"", BytesIO(b"first")), ["a/1.dcm"])
    assert loc.place(loc.stage(b"", BytesIO(b"second")), ["a/1.dcm", "a/1.h.dcm"]) == ("a/1.h.dcm", True)
    assert loc.place(loc.stage(b"", BytesIO(b"second")), ["a/1.dcm", "a/1.h.dcm"]) == ("a/1.h.dcm", False)
    assert loc.path("a/1.dcm").read_bytes() == b"first"
    assert list(loc.incoming.iterdir()) == []


def test_prepare_removes_what_an_interrupted_store_left(tmp_path: Path) -> None:
    loc = _location(tmp_path)
    (loc.incoming / "x.part").write_bytes(b"half")
    (loc.incoming / "rx-1.dcm").write_bytes(b"half")
    assert loc.prepare() == 2
    assert list(loc.incoming.iterdir()) == []


def test_unwritable_location_is_unavailable(tmp_path: Path) -> None:
    loc = _location(tmp_path)
    loc.incoming.rmdir()
    loc.incoming.write_bytes(b"")  # not a directory: even root cannot create a file in it
    with pytest.raises(ArchiveUnavailable, match="ENOTDIR"):
        loc.stage(b"", BytesIO(b"x"))


class _Failing(BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise OSError(28, "No space left on device")


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    loc = _location(tmp_path)
    with pytest.raises(ArchiveUnavailable, match="ENOSPC"):
        loc.stage(b"HEAD", _Failing())
    assert list(loc.incoming.iterdir()) == []


def test_sweep_removes_only_files_abandoned_long_enough(tmp_path: Path) -> None:
    loc = _location(tmp_path)
    old, fresh = loc.incoming / "rx-old.dcm", loc.incoming / "rx-fresh.dcm"
    old.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    os.utime(old, (1000.0, 1000.0))
    assert loc.sweep(600, now=fresh.stat().st_mtime + 1) == 1
    assert not old.exists() and fresh.exists()


def test_a_directory_removed_while_a_file_is_named_into_it_is_made_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiering (in the engine's process) removes a series directory it emptied while a receive worker
    names a new image into it: between the worker's mkdir and its link. The store must not fail for it."""
    import engine.archive.location as location_module

    loc = _location(tmp_path)
    real_link, removed = os.link, []

    def link_after_removal(src: object, dst: object) -> None:
        if not removed:
            parent = Path(str(dst)).parent
            parent.rmdir()
            parent.parent.rmdir()
            removed.append(parent)
        real_link(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(location_module.os, "link", link_after_removal)
    staged = loc.stage(b"", BytesIO(b"x"))
    assert loc.place(staged, ["1.2/1.2.3/1.2.3.4.dcm"]) == ("1.2/1.2.3/1.2.3.4.dcm", True)
    assert removed and loc.path("1.2/1.2.3/1.2.3.4.dcm").read_bytes() == b"x"
    assert list(loc.incoming.iterdir()) == []


def test_a_missing_temporary_file_is_still_an_error(tmp_path: Path) -> None:
    loc = _location(tmp_path)
    staged = loc.stage(b"", BytesIO(b"x"))
    staged.path.unlink()
    with pytest.raises(ArchiveUnavailable, match="ENOENT"):
        loc.place(staged, ["1.2/1.2.3/1.2.3.4.dcm"])


def test_prune_removes_empty_directories_up_to_the_root_only(tmp_path: Path) -> None:
    loc = _location(tmp_path)
    loc.place(loc.stage(b"", BytesIO(b"a")), ["1.2/1.2.3/a.dcm"])
    loc.place(loc.stage(b"", BytesIO(b"b")), ["1.2/1.2.4/b.dcm"])
    loc.path("1.2/1.2.3/a.dcm").unlink()
    loc.prune(loc.path("1.2/1.2.3"))
    assert not loc.path("1.2/1.2.3").exists() and loc.path("1.2/1.2.4/b.dcm").exists()  # the study keeps a series
    loc.path("1.2/1.2.4/b.dcm").unlink()
    loc.prune(loc.path("1.2/1.2.4"))
    assert sorted(p.name for p in loc.root.iterdir()) == [".incoming"]  # study gone; root and .incoming kept
    loc.prune(loc.incoming)
    assert loc.incoming.is_dir()
