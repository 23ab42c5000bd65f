"""Flushes started ahead (engine.archive.flush): errors reach the waiter, the pool survives them."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.archive.flush import FlushAhead
from engine.archive.location import ArchiveLocation
from engine.errors import ArchiveUnavailable


def test_a_failed_flush_is_raised_to_its_waiter_and_the_pool_goes_on(tmp_path: Path) -> None:
    for _ in range(8):  # more failures than the pool has threads: none of them dies
        with pytest.raises(FileNotFoundError):
            FlushAhead(tmp_path / "missing.dcm").wait()
    present = tmp_path / "present.dcm"
    present.write_bytes(b"data")
    FlushAhead(present).wait()


def test_adopt_raises_the_flush_ahead_failure_as_unavailable(tmp_path: Path) -> None:
    loc = ArchiveLocation("primary", tmp_path / "archive")
    loc.prepare()
    spool = loc.incoming / "rx-1.dcm"
    spool.write_bytes(b"data")
    ahead = loc.flush_ahead(spool)
    assert ahead is not None
    ahead.wait()
    assert loc.adopt(spool, 4, "0" * 64, ahead).path == spool
    gone = loc.incoming / "rx-2.dcm"
    with pytest.raises(ArchiveUnavailable):
        loc.adopt(gone, 4, "0" * 64, loc.flush_ahead(gone))


def test_only_a_spool_of_the_location_is_flushed_ahead(tmp_path: Path) -> None:
    loc = ArchiveLocation("primary", tmp_path / "archive")
    loc.prepare()
    assert loc.flush_ahead(tmp_path / "elsewhere.dcm") is None
