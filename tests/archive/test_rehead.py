"""A spooled file given a new head in place (FALLOC_FL_INSERT_RANGE), its tail neither copied nor rewritten."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.filereader import read_file_meta_info

from engine.archive import rehead as rehead_module
from engine.archive.location import ArchiveLocation, FileTail
from engine.archive.part10 import (
    PADDING_CREATOR_UID,
    ROOMY_META_BYTES,
    as_written,
    dataset_offset,
    encode_file_meta,
    min_padding,
    pad_file_meta,
    with_room,
)
from engine.archive.rehead import rehead, rewrite_front
from engine.errors import ArchiveUnavailable

META = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", "CT1")


def _spool(loc: ArchiveLocation, old_head: bytes, tail: bytes) -> Path:
    path = loc.incoming / "rx-1.dcm"
    path.write_bytes(META + old_head + tail)
    return path


def _location(tmp_path: Path) -> ArchiveLocation:
    loc = ArchiveLocation("primary", tmp_path / "archive")
    loc.prepare()
    return loc


def _supported(tmp_path: Path) -> bool:
    """Can this file system insert a range? (ext4 and XFS can; tmpfs cannot.)"""
    probe = tmp_path / "probe"
    probe.write_bytes(b"\0" * 8192)
    fd = os.open(probe, os.O_RDWR)
    try:
        return rehead_module._fallocate is not None and rehead_module._fallocate(fd, 0x20, 0, 4096) == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize(("old", "new"), [(200, 900), (900, 200), (1000, 1000 + min_padding() - 2),
                                           (1000, 1000 + 8192 + 10), (300, 300), (100, 4096 * 3)])
def test_the_new_head_is_written_over_the_front_and_the_tail_kept(tmp_path: Path, old: int, new: int) -> None:
    if not _supported(tmp_path):
        pytest.skip("this file system cannot insert a range (not ext4/XFS): the copy path is tested instead")
    loc = _location(tmp_path)
    tail = os.urandom(300_001 + old)
    path = _spool(loc, b"o" * old, tail)
    new_head = b"n" * new
    with path.open("rb") as f:
        done = rehead(loc, path, META, FileTail(new_head, f, len(META) + old))
    assert done is not None
    data = path.read_bytes()
    offset = dataset_offset(data[:1 << 16])
    assert data[:offset] == done.meta and data[offset:] == new_head + tail
    assert (done.staged.size, done.staged.sha256) == (len(new_head + tail), hashlib.sha256(new_head + tail).hexdigest())
    assert done.staged.path == path


def test_the_padded_meta_is_the_same_meta_with_private_information(tmp_path: Path) -> None:
    padded = pad_file_meta(META, len(META) + 4000)
    assert len(padded) == len(META) + 4000 and dataset_offset(padded) == len(padded)
    path = tmp_path / "meta.dcm"
    path.write_bytes(padded)
    meta = read_file_meta_info(path)
    assert meta.PrivateInformationCreatorUID == PADDING_CREATOR_UID
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.4" and meta.SourceApplicationEntityTitle == "CT1"
    assert pad_file_meta(META, len(META)) == META
    with pytest.raises(ValueError):
        pad_file_meta(META, len(META) + min_padding() - 2)


def test_a_file_system_that_cannot_insert_a_range_leaves_the_file_unchanged(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*args: Any) -> int:
        ctypes.set_errno(errno.EOPNOTSUPP)
        return -1

    monkeypatch.setattr(rehead_module, "_fallocate", unsupported)
    loc = _location(tmp_path)
    path = _spool(loc, b"o" * 100, b"pixels" * 1000)
    before = path.read_bytes()
    with path.open("rb") as f:
        assert rehead(loc, path, META, FileTail(b"n" * 5000, f, len(META) + 100)) is None
    assert path.read_bytes() == before


def test_only_a_spool_of_the_location_is_reheaded(tmp_path: Path) -> None:
    loc = _location(tmp_path)
    path = tmp_path / "elsewhere.dcm"
    path.write_bytes(META + b"o" * 100 + b"t" * 100)
    with path.open("rb") as f:
        assert rehead(loc, path, META, FileTail(b"n" * 50, f, len(META) + 100)) is None


def test_the_flush_runs_beside_the_hash_and_ends_before_rehead_returns(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if not _supported(tmp_path):
        pytest.skip("this file system cannot insert a range (not ext4/XFS): the copy path is tested instead")
    loc = _location(tmp_path)
    path = _spool(loc, b"o" * 200, os.urandom(300_000))
    flushes: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def recorded(fd: int) -> None:
        real_fsync(fd)
        flushes.append((os.readlink(f"/proc/self/fd/{fd}"), threading.current_thread().name))

    monkeypatch.setattr(os, "fsync", recorded)
    with path.open("rb") as f:
        done = rehead(loc, path, META, FileTail(b"n" * 900, f, len(META) + 200))
    assert done is not None
    assert flushes == [(str(path), flushes[0][1])] and flushes[0][1].startswith("radbridge-fsync")


def test_a_failed_flush_of_the_new_head_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _supported(tmp_path):
        pytest.skip("this file system cannot insert a range (not ext4/XFS): the copy path is tested instead")
    loc = _location(tmp_path)
    path = _spool(loc, b"o" * 200, os.urandom(300_000))

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "simulated write-back failure")

    monkeypatch.setattr(os, "fsync", failing)
    with path.open("rb") as f, pytest.raises(ArchiveUnavailable):
        rehead(loc, path, META, FileTail(b"n" * 900, f, len(META) + 200))


@pytest.mark.parametrize("tail_size", [300_000, 3 << 20])  # held in the thread's buffer, or hashed streamed
def test_the_tail_is_read_before_the_range_is_inserted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       tail_size: int) -> None:
    """Inserting a range drops the file's cached pages: a tail read afterwards came from the disk again, and
    so did the last page of a front that ended inside one (read back to be written)."""
    if not _supported(tmp_path):
        pytest.skip("this file system cannot insert a range (not ext4/XFS): the copy path is tested instead")
    loc = _location(tmp_path)
    tail = os.urandom(tail_size)
    path = _spool(loc, b"o" * 200, tail)
    calls: list[str] = []
    real_fallocate, real_preadv = rehead_module._fallocate, os.preadv

    def fallocate(*args: Any) -> int:
        calls.append("insert")
        return real_fallocate(*args)  # type: ignore[misc]

    def preadv(fd: int, buffers: Any, offset: int) -> int:
        calls.append("read")
        return real_preadv(fd, buffers, offset)

    def pread(fd: int, count: int, offset: int) -> bytes:
        calls.append("read")
        return real_pread(fd, count, offset)

    def pwrite(fd: int, data: Any, offset: int) -> int:
        written = real_pwrite(fd, data, offset)
        calls.append("write")
        ends.append(offset + written)
        return written

    real_pread, real_pwrite = os.pread, os.pwrite
    ends: list[int] = []
    monkeypatch.setattr(rehead_module, "_fallocate", fallocate)
    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "pwrite", pwrite)
    new_head = b"n" * 900
    with path.open("rb") as f:
        done = rehead(loc, path, META, FileTail(new_head, f, len(META) + 200))
    assert done is not None
    assert "read" in calls and "read" not in calls[calls.index("insert"):]  # nothing read after the insertion
    assert ends and ends[-1] % 4096 == 0  # the front written in whole pages
    data = path.read_bytes()
    assert data[len(done.meta):] == new_head + tail
    assert (done.staged.size, done.staged.sha256) == (len(new_head + tail), hashlib.sha256(new_head + tail).hexdigest())


# -- the new front written over the old one, in the room the receiver left (rewrite_front) ---------------------------

ROOMY = with_room(META)


@pytest.mark.parametrize(("old", "new"), [(200, 900), (900, 200), (300, 300), (500, 500 + len(ROOMY) - len(META)),
                                           (700, 700 + len(ROOMY) - len(META) - min_padding())])
def test_a_header_that_fits_the_room_is_written_in_place_without_inserting_a_range(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: int, new: int) -> None:
    loc = _location(tmp_path)
    tail = os.urandom(300_001 + old)
    path = loc.incoming / "rx-1.dcm"
    path.write_bytes(ROOMY + b"o" * old + tail)
    blocks = os.stat(path).st_blocks
    inserted: list[Any] = []
    monkeypatch.setattr(rehead_module, "_fallocate", lambda *args: inserted.append(args) or 0)
    new_head = b"n" * new
    with path.open("rb") as f:
        done = rewrite_front(loc, path, META, FileTail(new_head, f, len(ROOMY) + old))
    assert done is not None and inserted == []
    data = path.read_bytes()
    offset = dataset_offset(data[:1 << 16])
    assert data[:offset] == done.meta and data[offset:] == new_head + tail
    assert offset == len(META) + (len(ROOMY) - len(META)) + old - new  # the tail did not move
    assert (done.staged.size, done.staged.sha256) == (len(new_head + tail), hashlib.sha256(new_head + tail).hexdigest())
    assert os.stat(path).st_blocks == blocks
    meta = read_file_meta_info(path)
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.4" and meta.SourceApplicationEntityTitle == "CT1"


@pytest.mark.parametrize("growth", [len(ROOMY) - len(META) + 2, len(ROOMY) - len(META) - min_padding() + 2])
def test_a_header_that_does_not_fit_the_room_leaves_the_file_unchanged(tmp_path: Path, growth: int) -> None:
    loc = _location(tmp_path)
    path = loc.incoming / "rx-1.dcm"
    before = ROOMY + b"o" * 400 + os.urandom(10_000)
    path.write_bytes(before)
    with path.open("rb") as f:
        assert rewrite_front(loc, path, META, FileTail(b"n" * (400 + growth), f, len(ROOMY) + 400)) is None
    assert path.read_bytes() == before


def test_a_spool_without_room_fits_only_a_header_of_the_same_length(tmp_path: Path) -> None:
    loc = _location(tmp_path)
    path = _spool(loc, b"o" * 400, b"t" * 5000)
    with path.open("rb") as f:
        assert rewrite_front(loc, path, META, FileTail(b"n" * 402, f, len(META) + 400)) is None
        done = rewrite_front(loc, path, META, FileTail(b"n" * 400, f, len(META) + 400))
    assert done is not None and done.meta == META and path.read_bytes() == META + b"n" * 400 + b"t" * 5000


def test_a_failed_flush_of_the_rewritten_front_is_archive_unavailable(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    loc = _location(tmp_path)
    path = loc.incoming / "rx-1.dcm"
    path.write_bytes(ROOMY + b"o" * 400 + b"t" * 5000)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(rehead_module.os, "fsync", failing)
    with path.open("rb") as f, pytest.raises(ArchiveUnavailable, match="EIO"):
        rewrite_front(loc, path, META, FileTail(b"n" * 500, f, len(ROOMY) + 400))


def test_with_room_pads_to_a_whole_block_and_as_written_recognises_it() -> None:
    assert len(ROOMY) % ROOMY_META_BYTES == 0 and dataset_offset(ROOMY) == len(ROOMY)
    head = ROOMY + b"dataset"
    assert as_written(META, head, len(ROOMY)) == ROOMY
    assert as_written(META, META + b"dataset", len(META)) == META
    other = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.5", "1.2.840.10008.1.2.1", "CT1")
    assert as_written(other, head, len(ROOMY)) is None  # another instance's meta, padded to the same length
    assert as_written(META, head[:100], len(ROOMY)) is None
