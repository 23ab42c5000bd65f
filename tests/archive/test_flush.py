"""Flushes started ahead (engine.archive.flush): errors reach the waiter, the pool survives them; with other
images in flight in the process, flushes and hashes run in the thread that waits for them."""

from __future__ import annotations

import gc
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.archive.flush import IN_FLIGHT, FlushAhead, HashAhead
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


class _Token:
    """An image in flight (any object that can be referenced weakly)."""


@contextmanager
def _images_in_flight(count: int) -> Iterator[None]:
    tokens = [_Token() for _ in range(count)]
    for token in tokens:
        IN_FLIGHT.started(token)
    try:
        yield
    finally:
        for token in tokens:
            IN_FLIGHT.ended(token)


def _recorded_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    threads: list[str] = []
    real_fsync = os.fsync

    def recorded(fd: int) -> None:
        real_fsync(fd)
        threads.append(threading.current_thread().name)

    monkeypatch.setattr(os, "fsync", recorded)
    return threads


def test_alone_a_flush_and_a_hash_run_in_pool_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rx.dcm"
    path.write_bytes(b"m" * 10 + b"d" * 5000)
    threads = _recorded_fsyncs(monkeypatch)
    with _images_in_flight(1):
        ahead = FlushAhead(path)
        hashing = HashAhead(path, 5000)
        assert hashing.wait() == hashlib.sha256(b"d" * 5000).hexdigest()
        ahead.wait()
    assert len(threads) == 1 and threads[0].startswith("radbridge-fsync")


def test_with_other_images_in_flight_a_flush_and_a_hash_run_when_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rx.dcm"
    path.write_bytes(b"m" * 10 + b"d" * 5000)
    threads = _recorded_fsyncs(monkeypatch)
    with _images_in_flight(2):
        ahead = FlushAhead(path)
        hashing = HashAhead(path, 5000)
        unused = FlushAhead(path)  # a spool given a new head: its own flush is never waited for
    time.sleep(0.05)
    assert threads == []  # nothing ran in another thread
    assert hashing.wait() == hashlib.sha256(b"d" * 5000).hexdigest()
    ahead.wait()
    assert threads == [threading.current_thread().name]
    del unused


def test_a_deferred_flush_raises_its_error_to_each_wait(tmp_path: Path) -> None:
    with _images_in_flight(2):
        ahead = FlushAhead(tmp_path / "missing.dcm")
        hashing = HashAhead(tmp_path / "missing.dcm", 10)
    for _ in range(2):
        with pytest.raises(FileNotFoundError):
            ahead.wait()
    with pytest.raises(FileNotFoundError):
        hashing.wait()


def test_images_in_flight_are_held_weakly() -> None:
    before = IN_FLIGHT.count()

    token = _Token()
    IN_FLIGHT.started(token)
    assert IN_FLIGHT.count() == before + 1
    del token  # a receiver that died without ended()
    gc.collect()
    assert IN_FLIGHT.count() == before
