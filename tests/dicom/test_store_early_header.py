"""A data set's header checked, matched and coerced while its pixel data still arrives (one image in flight).

The streamed receive hands the header to a work-ahead thread once the first fragments are spooled
(:meth:`~channels.dicom.storage.StorageService.read_header_early`); the store walks the whole data set and
uses that work only when the data set is complete as the header said. DCMTK storescu sends generated CT
images in 16 KB PDUs (many fragments an image) to the in-process SCP.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from channels.dicom import storage as storage_module
from channels.dicom import store_stream as stream_module
from channels.dicom.storage import StorageService
from engine.archive import flush as flush_module
from engine.archive.flush import WorkAhead
from engine.domain.handlers import OrdersHandler, order_policy
from engine.domain.reconciler import Reconciler
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import (
    associated,
    dataset_bytes,
    pixel_data,
    raw_sender,
    running_scp,
    send_raw,
    storescu,
)
from tests.dicom.test_store_stream import _pdu, _store_command
from tests.domain.factories import apply_records, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]
CT = "1.2.840.10008.5.1.4.1.1.2"
PDU = ("--max-send-pdu", "16384")


def _ct(out: Path, n: int, study: str, series: str, tail: bytes = b"") -> Path:
    """A 512 x 512 x 16 bit CT of patient P1 / accession ACC1 (its operator typed the name short)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.AccessionNumber, ds.Modality = "P1", "SMITH^J", "ACC1", "CT"
    ds.SeriesNumber, ds.InstanceNumber = 1, n + 1
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = os.urandom(512 * 512 * 2)
    path = out / f"ct{n}.dcm"
    ds.save_as(path, enforce_file_format=True)
    if tail:
        with path.open("ab") as f:
            f.write(tail)
    return path


def _cts(out: Path, count: int) -> list[Path]:
    out.mkdir(exist_ok=True)
    study, series = generate_uid(), generate_uid()
    return [_ct(out, n, study, series) for n in range(count)]


def _with_order(scp: Any) -> None:
    apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
        patient("P1", patient_name="SMITH^JOHN", birth_date="19600101", sex="M"),
        order("PL1", patient_id="P1", accession_number="ACC1", modality="CT"),
    ])  # fmt: skip


class Spy:
    """Where each early read ran and what it made; whether the store used it. The store's take waits for the
    early read to have started (on a loaded machine the work-ahead thread may not have run before the last
    fragment arrived: then the store reads the header itself, by design, and these tests would see nothing)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        take = WorkAhead.take

        def started_then_taken(job: WorkAhead[Any]) -> Any:
            assert _until(lambda: job._state != flush_module._QUEUED)
            return take(job)

        monkeypatch.setattr(WorkAhead, "take", started_then_taken)
        self.reads: list[tuple[str, bool]] = []  # (thread, made something)
        self.used: list[bool] = []
        self._lock = threading.Lock()
        read, complete = StorageService.read_header_early, storage_module._complete_as_read_early

        def read_early(service: StorageService, request: Any) -> Any:
            early = read(service, request)
            with self._lock:
                self.reads.append((threading.current_thread().name, early is not None))
            return early

        def completed(*args: Any) -> bool:
            ok = complete(*args)
            with self._lock:
                self.used.append(ok)
            return ok

        monkeypatch.setattr(StorageService, "read_header_early", read_early)
        monkeypatch.setattr(storage_module, "_complete_as_read_early", completed)


def test_a_lone_images_header_is_matched_and_coerced_ahead_and_its_stored_file_is_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    files = _cts(tmp_path / "in", 3)
    stored: dict[str, list[Dataset]] = {}
    for kind in ("ahead", "in the store"):
        if kind == "in the store":  # the same images with the early read off: what the store alone makes
            monkeypatch.setattr(stream_module, "EARLY_HEADER_BYTES", 1 << 40)
        spy = Spy(monkeypatch)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="engine.domain.reconciler"), \
                running_scp(tmp_path / kind, mappings_dir=ROOT / "mappings") as scp:
            _with_order(scp)
            done = storescu(scp.port, files, *PDU)
            assert done.returncode == 0, done.stderr
            rows = scp.instances()
            stored[kind] = [dcmread(scp.stored_path(row.sop_instance_uid)) for row in rows]
            assert [pixel_data(scp.stored_path(r.sop_instance_uid)) for r in rows] == [pixel_data(f) for f in files]
        coerced = [r for r in caplog.records if "coerced" in r.getMessage()]
        assert len(coerced) == 3  # logged once an image, by the store that used it
        if kind == "ahead":
            assert spy.reads == [("radbridge-ahead_0", True)] * 3 and spy.used == [True] * 3
        else:
            assert spy.reads == [] and spy.used == []

    def comparable(ds: Dataset) -> list[tuple[str, Any]]:
        item = ds.OriginalAttributesSequence[-1]
        assert item.ReasonForTheAttributeModification == "COERCE"
        assert item.ModifiedAttributesSequence[0].PatientName == "SMITH^J"
        return [(e.keyword, e.value) for e in ds if e.keyword not in ("OriginalAttributesSequence", "PixelData")]

    ahead, alone = stored["ahead"], stored["in the store"]
    assert [str(ds.PatientName) for ds in ahead] == ["SMITH^JOHN"] * 3
    assert [comparable(a) for a in ahead] == [comparable(b) for b in alone]


def test_an_unscheduled_image_read_ahead_is_stored_byte_identical(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _cts(tmp_path / "in", 2)
    spy = Spy(monkeypatch)
    with running_scp(tmp_path / "scp", mappings_dir=ROOT / "mappings") as scp:
        assert storescu(scp.port, files, *PDU).returncode == 0
        stored = [dataset_bytes(scp.stored_path(row.sop_instance_uid)) for row in scp.instances()]
    assert stored == [dataset_bytes(f) for f in files]
    assert spy.reads == [("radbridge-ahead_0", True)] * 2, spy.reads
    assert spy.used == [True, True]


def test_a_data_set_broken_after_its_header_is_refused_though_its_header_was_read_ahead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The header is fine and matched ahead; an element after the pixel data runs past the end: the store's
    walk of the whole data set refuses it (0xC210) as it would have without the early read, logs no coercion,
    keeps it in quarantine, and the next image of the association is stored."""
    (tmp_path / "in").mkdir()
    study, series = generate_uid(), generate_uid()
    broken = _ct(tmp_path / "in", 0, study, series, tail=b"\xe1\x7f\x10\x00LO\x40\x00" + b"X" * 8)  # 64 announced
    good = _ct(tmp_path / "in", 1, study, series)
    spy = Spy(monkeypatch)
    with caplog.at_level(logging.INFO, logger="engine.domain.reconciler"), \
            running_scp(tmp_path / "scp", mappings_dir=ROOT / "mappings") as scp:
        _with_order(scp)
        with raw_sender(scp.port, [(CT, ExplicitVRLittleEndian)]) as assoc:
            assert send_raw(assoc, broken) == 0xC210
            assert send_raw(assoc, good) == 0x0000
        assert len(scp.quarantined()) == 1 and len(scp.instances()) == 1
    assert [made for _, made in spy.reads] == [True, True]  # both headers matched ahead
    assert len([r for r in caplog.records if "coerced" in r.getMessage()]) == 1  # the stored one only


def test_a_meta_element_after_the_pixel_data_makes_the_store_read_the_header_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group 0002 element after the pixel data, which the header read ahead cannot know about: the store
    does not use that read; the stored data set leaves the element out, as without the early read."""
    (tmp_path / "in").mkdir()
    meta_after = b"\x02\x00\x13\x00SH\x06\x00OTHER "  # (0002,0013) Implementation Version Name
    path = _ct(tmp_path / "in", 0, generate_uid(), generate_uid(), tail=meta_after)
    spy = Spy(monkeypatch)
    with running_scp(tmp_path / "scp", mappings_dir=ROOT / "mappings") as scp:
        with raw_sender(scp.port, [(CT, ExplicitVRLittleEndian)]) as assoc:
            assert send_raw(assoc, path) == 0x0000
        stored = dataset_bytes(scp.stored_path(scp.instances()[0].sop_instance_uid))
    assert spy.reads == [("radbridge-ahead_0", True)] and spy.used == [False]
    assert meta_after not in stored and stored == dataset_bytes(path)[: -len(meta_after)]


def test_an_early_read_that_fails_leaves_the_store_to_do_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _cts(tmp_path / "in", 2)
    prepare = Reconciler.prepare
    failed: list[str] = []

    def flaky(self: Reconciler, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name.startswith("radbridge-ahead"):
            failed.append("ahead")
            raise RuntimeError("a failure of the early read only")
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(Reconciler, "prepare", flaky)
    spy = Spy(monkeypatch)
    with running_scp(tmp_path / "scp", mappings_dir=ROOT / "mappings") as scp:
        _with_order(scp)
        done = storescu(scp.port, files, *PDU)
        assert done.returncode == 0, done.stderr
        names = [str(dcmread(scp.stored_path(r.sop_instance_uid)).PatientName) for r in scp.instances()]
    assert failed == ["ahead", "ahead"] and names == ["SMITH^JOHN"] * 2
    assert spy.used == []  # nothing made ahead: the store read each header itself


def _spool_handles(spool_dir: Path) -> list[str]:
    """This process's open files in ``spool_dir``."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(spool_dir)):
            names.append(target)
    return names


def test_an_association_aborted_mid_data_set_leaves_no_early_read_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header was read ahead (its handle on the spool open); the peer aborts before the pixel data ends:
    the spool is removed and the early read's handle closed."""
    (tmp_path / "in").mkdir()
    path = _ct(tmp_path / "in", 0, generate_uid(), generate_uid())
    read = StorageService.read_header_early
    made: list[Any] = []  # held here: only an explicit close, not the garbage collector, may close its handle
    ready = threading.Event()

    def read_early(service: StorageService, request: Any) -> Any:
        early = read(service, request)
        made.append(early)
        ready.set()
        return early

    monkeypatch.setattr(StorageService, "read_header_early", read_early)
    data = dataset_bytes(path)
    with running_scp(tmp_path / "scp", mappings_dir=ROOT / "mappings") as scp:
        _with_order(scp)
        spool_dir = scp.archive / ".incoming"
        with associated(scp.port, CT) as assoc:
            cx = assoc.accepted_contexts[0].context_id
            sock = assoc.dul.socket.socket
            sock.sendall(_pdu((cx, 0x03, _store_command(1, dcmread(path).SOPInstanceUID)), (cx, 0x00, data[:65536])))
            assert ready.wait(10) and len(made) == 1 and made[0] is not None
            assoc.abort()
        assert _until(lambda: _spool_handles(spool_dir) == [] and list(spool_dir.iterdir()) == [])
        assert scp.instances() == []


def _until(condition: Any, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
