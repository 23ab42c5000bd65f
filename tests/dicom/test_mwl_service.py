"""WorklistService.find: raw-encoded responses equal the Dataset path; C-CANCEL stops the stream."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

from bench.bench_worklist import populate
from channels.dicom.mwl import (
    BATCH,
    CANCEL,
    MAX_QUEUED_RESPONSES,
    OUT_OF_RESOURCES,
    PENDING,
    PENDING_UNSUPPORTED,
    UNABLE_TO_PROCESS,
    WorklistService,
)
from engine.config.models import WorklistConfig
from engine.domain.handlers import OrdersHandler, order_policy
from engine.store.database import Database

from ..domain.factories import apply_records, order, patient
from .conftest import make_config


@pytest.fixture
def service(tmp_path: Path) -> Iterator[WorklistService]:
    config = make_config(tmp_path)
    db = Database(f"sqlite:///{tmp_path / 'rb.db'}", sqlite_synchronous="NORMAL")
    db.migrate()
    apply_records(db, OrdersHandler(order_policy(config)), [
        patient("P1", patient_name="MÜLLER^JÜRGEN"),
        order("PL1", accession_number="ACC1", scheduled_station_ae_title="CT1\\CT2"),
        order("PL2", accession_number="ACC2"),
    ])  # fmt: skip
    yield WorklistService.from_config(db, WorklistConfig())
    db.close()


def _query() -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.AccessionNumber, ds.PatientComments = "", "", ""
    sps = Dataset()
    sps.ScheduledStationAETitle, sps.ScheduledProcedureStepStartDate = "", ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_negotiated_syntax_yields_the_same_bytes_as_the_dataset_path(
    service: WorklistService, syntax: str
) -> None:
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    plain = [(s, encode(d, implicit, little)) for s, d in service.find(_query(), lambda: False) if d]
    fast = [(s, encode(d, implicit, little)) for s, d in service.find(_query(), lambda: False, syntax) if d]
    assert fast == plain
    assert [s for s, _ in fast] == [PENDING_UNSUPPORTED, PENDING_UNSUPPORTED]


def test_cancel_between_responses_ends_with_cancel_status(service: WorklistService) -> None:
    ds = _query()
    del ds.PatientComments
    calls = iter([False, True])
    got = [s for s, _ in service.find(ds, lambda: next(calls), ExplicitVRLittleEndian)]
    assert got == [PENDING, CANCEL]


class FakeSink:
    """Records batches; says "cancelled" after ``cancel_after`` batches."""

    def __init__(self, implicit_vr: bool = False, cancel_after: int | None = None) -> None:
        self.implicit_vr = implicit_vr
        self.batches: list[list[tuple[int, bytes]]] = []
        self.cancel_after = cancel_after

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.batches) >= self.cancel_after

    def send(self, responses: Sequence[tuple[int, bytes]]) -> bool:
        if self.cancelled():
            return False
        self.batches.append(list(responses))
        return True


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_encoded_responses_are_the_bytes_of_the_dataset_path(service: WorklistService, syntax: str) -> None:
    implicit = syntax == ImplicitVRLittleEndian
    sink = FakeSink(implicit)
    assert list(service.find_encoded(_query(), sink)) == []  # success is pynetdicom's to send
    plain = [(s, encode(d, implicit, True)) for s, d in service.find(_query(), lambda: False) if d]
    assert [r for batch in sink.batches for r in batch] == plain


def _many(tmp_path: Path, count: int, **worklist: Any) -> WorklistService:
    db = Database(f"sqlite:///{tmp_path / 'many.db'}", sqlite_synchronous="NORMAL")
    db.migrate()
    populate(db, count, date.today())
    return WorklistService.from_config(db, WorklistConfig(**worklist))


def test_encoded_responses_go_out_in_batches(tmp_path: Path) -> None:
    sink = FakeSink()
    assert list(_many(tmp_path, 100, max_matches=1000).find_encoded(_query(), sink)) == []
    assert [len(b) for b in sink.batches] == [BATCH, BATCH, BATCH, 100 - 3 * BATCH]


def test_cancel_stops_the_batches_with_cancel_status(tmp_path: Path) -> None:
    sink = FakeSink(cancel_after=2)
    assert list(_many(tmp_path, 100, max_matches=1000).find_encoded(_query(), sink)) == [(CANCEL, None)]
    assert len(sink.batches) == 2


def test_more_matches_than_allowed_sends_the_first_then_out_of_resources(tmp_path: Path) -> None:
    sink = FakeSink()
    assert list(_many(tmp_path, 100, max_matches=40).find_encoded(_query(), sink)) == [(OUT_OF_RESOURCES, None)]
    assert [len(b) for b in sink.batches] == [BATCH, 40 - BATCH]


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_invalid_query_is_unable_to_process(service: WorklistService) -> None:
    query = _query()
    query.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "not-a-date"
    assert list(service.find_encoded(query, FakeSink())) == [(UNABLE_TO_PROCESS, None)]


class _ConsumingCancel:
    """Like pynetdicom's ``Event.is_cancelled``: reports a received C-CANCEL once, then forgets it."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self) -> bool:
        received, self.received = self.received, False
        return received


def test_cancel_received_while_waiting_for_room_ends_with_cancel_status(service: WorklistService) -> None:
    ds = _query()
    del ds.PatientComments
    cancel = _ConsumingCancel()
    backlogs = iter([0, MAX_QUEUED_RESPONSES + 1])

    def backlog() -> int:
        # Before the second response the send queue is full and the C-CANCEL arrives meanwhile.
        size = next(backlogs, 0)
        if size > MAX_QUEUED_RESPONSES:
            cancel.received = True
        return size

    got = [s for s, _ in service.find(ds, cancel, ExplicitVRLittleEndian, backlog)]
    assert got == [PENDING, CANCEL]
