"""The spool's fsync started ahead (engine.archive.flush): overlapped with the checks, still before the name.

storescu sends real instances to the in-process SCP; ``os.fsync`` and ``os.link`` are wrapped
to record which file was flushed by which thread and when, so the tests see the order of the
durability steps as the kernel got them.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import running_scp, storescu


@dataclass(frozen=True)
class Event:
    what: str  # "fsync" or "link"
    path: str  # the flushed file (from /proc/self/fd), or the link's source
    thread: str
    start: float
    end: float


class Recorder:
    """``os.fsync`` and ``os.link`` as the storage path calls them, recorded (and optionally failing)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_spool_fsync: bool = False) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._fsync, self._link = os.fsync, os.link
        self._fail = fail_spool_fsync
        monkeypatch.setattr(os, "fsync", self.fsync)
        monkeypatch.setattr(os, "link", self.link)

    def fsync(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        start = time.monotonic()
        try:
            if self._fail and "/.incoming/rx-" in path:
                raise OSError(errno.EIO, "simulated write-back failure")
            self._fsync(fd)
        finally:
            self._add(Event("fsync", path, threading.current_thread().name, start, time.monotonic()))

    def link(self, src: str | os.PathLike[str], dst: str | os.PathLike[str], **kwargs: object) -> None:
        start = time.monotonic()
        self._link(src, dst, **kwargs)  # type: ignore[arg-type]
        self._add(Event("link", str(src), threading.current_thread().name, start, time.monotonic()))

    def _add(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)


@contextmanager
def _association(port: int, ds: Any) -> Iterator[Any]:
    """A pynetdicom association for ``ds``'s SOP class and transfer syntax, released at the end."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


@pytest.fixture
def instances(corpus: Path, tmp_path: Path) -> Iterator[list[Path]]:
    out = tmp_path / "send"
    out.mkdir()
    paths = []
    for n in range(3):
        ds = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        path = out / f"ct{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    yield paths


@needs_dcmtk
def test_the_spool_is_flushed_in_the_background_and_before_its_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instances: list[Path]) -> None:
    with running_scp(tmp_path / "scp") as scp:
        recorder = Recorder(monkeypatch)
        done = storescu(scp.port, instances)
        assert done.returncode == 0, done.stderr
        stored = scp.instances()
    assert len(stored) == 3
    links = [e for e in recorder.events if e.what == "link" and "/.incoming/rx-" in e.path]
    assert len(links) == 3
    for link in links:
        flushes = [e for e in recorder.events if e.what == "fsync" and e.path == link.path]
        assert len(flushes) == 1, "one flush of each spool, not a second one in adopt"
        assert flushes[0].thread.startswith("radbridge-fsync"), "started ahead, in the pool"
        assert flushes[0].end <= link.start, "durable before it has a name"


def test_a_spool_whose_early_flush_fails_is_refused_out_of_resources_and_never_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instances: list[Path]) -> None:
    ds = dcmread(instances[0])
    with running_scp(tmp_path / "scp") as scp:
        Recorder(monkeypatch, fail_spool_fsync=True)
        with _association(scp.port, ds) as assoc:
            assert int(assoc.send_c_store(ds).Status) == 0xA700
        assert scp.instances() == []
        named = [p for p in scp.archive.rglob("*.dcm") if ".incoming" not in p.parts]
        assert named == []


class DirectoryRecorder(Recorder):
    """Also notes, when each flush of a study's directory ends, which instances were committed by then."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, db_path: Path, fail_directory: bool = False) -> None:
        super().__init__(monkeypatch)
        self.db_path, self.fail_directory = db_path, fail_directory
        self.committed_at_flush: list[set[str]] = []

    def fsync(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not os.path.isdir(path) or ".incoming" in path or "/quarantine" in path or path.endswith("/archive"):
            return super().fsync(fd)
        if self.fail_directory:
            raise OSError(errno.EIO, "simulated directory flush failure")
        super().fsync(fd)
        import sqlite3

        with sqlite3.connect(self.db_path) as other:  # what another process sees committed now
            self.committed_at_flush.append({r[0] for r in other.execute("SELECT sop_instance_uid FROM instances")})


@needs_dcmtk
def test_a_names_directory_is_flushed_before_the_row_that_names_the_file_is_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instances: list[Path]) -> None:
    """The row that names a stored file is committed only after the flush of its name's directory ended
    (seen from another connection when each flush ends): a crash can never leave a row without its file."""
    with running_scp(tmp_path / "scp") as scp:
        recorder = DirectoryRecorder(monkeypatch, tmp_path / "scp" / "rb.db")
        done = storescu(scp.port, instances)
        assert done.returncode == 0, done.stderr
        stored = [r.sop_instance_uid for r in scp.instances()]
    assert len(stored) == 3
    directory_flushes = [e for e in recorder.events if e.what == "fsync" and os.path.isdir(e.path)
                         and ".incoming" not in e.path]
    assert len(directory_flushes) >= 3
    for n, seen in enumerate(recorder.committed_at_flush[-3:]):
        assert stored[n] not in seen, "a row committed before its name was durable"
        assert set(stored[:n]) <= seen


@needs_dcmtk
def test_a_name_whose_directory_flush_fails_is_refused_out_of_resources_and_never_indexed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instances: list[Path]) -> None:
    with running_scp(tmp_path / "scp") as scp:
        storescu(scp.port, instances[:1])  # the study's directories exist: the next name only flushes its own
        recorder = DirectoryRecorder(monkeypatch, tmp_path / "scp" / "rb.db", fail_directory=True)
        ds = dcmread(instances[1])
        with _association(scp.port, ds) as assoc:
            assert int(assoc.send_c_store(ds).Status) == 0xA700
            recorder.fail_directory = False
            again = dcmread(instances[2])
            assert int(assoc.send_c_store(again).Status) == 0x0000
        stored = {r.sop_instance_uid for r in scp.instances()}
    assert ds.SOPInstanceUID not in stored and again.SOPInstanceUID in stored

