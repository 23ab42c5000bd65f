"""WorklistService.find: raw-encoded responses equal the Dataset path; C-CANCEL stops the stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

from channels.dicom.mwl import CANCEL, MAX_QUEUED_RESPONSES, PENDING, PENDING_UNSUPPORTED, WorklistService
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
