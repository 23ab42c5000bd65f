"""MPPS with pynetdicom as the SCU: transitions, immutability, one RIS message per transition."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import select

from engine.domain.tables import mpps_series, procedure_steps
from engine.store.schema import outbox

from ..domain.factories import apply_records, order, patient
from .conftest import Radbridge

MPPS = "1.2.840.10008.3.1.2.3.3"
UID = "1.2.826.0.1.3680043.8.498.1"


def _assoc(port: int) -> Any:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MPPS)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    return assoc


def _create_ds(status: str = "IN PROGRESS") -> Dataset:
    ds = Dataset()
    item = Dataset()
    item.StudyInstanceUID = "1.2.3.1"
    item.AccessionNumber = "ACC1"
    item.ScheduledProcedureStepID = "SPS1"
    ds.ScheduledStepAttributesSequence = [item]
    ds.PatientID = "P1"
    ds.Modality = "CT"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepStartDate = "20261122"
    return ds


def _set_ds(status: str) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    series = Dataset()
    series.SeriesInstanceUID = "1.2.3.1.1"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = "1.2.3.1.1.1"
    series.ReferencedImageSequence = [ref]
    ds.PerformedSeriesSequence = [series]
    return ds


def _load(rb: Radbridge) -> None:
    apply_records(
        rb.db,
        rb.orders,
        [
            patient(),
            order(
                "PL1",
                accession_number="ACC1",
                requested_procedure_id="RP1",
                scheduled_procedure_step_id="SPS1",
                study_instance_uid="1.2.3.1",
            ),
        ],
    )


def _step_status(rb: Radbridge) -> str:
    return str(rb.db.read(lambda c: c.execute(select(procedure_steps.c.status)).scalar_one()))


def _ris_messages(rb: Radbridge) -> list[str]:
    rows = rb.db.read(
        lambda c: c.execute(
            select(outbox.c.destination, outbox.c.payload).order_by(outbox.c.id)
        ).all()
    )
    return [p.decode() for d, p in rows if d == "ris"]


def test_in_progress_then_completed_moves_the_step_and_notifies_once_each(
    radbridge: Radbridge,
) -> None:
    _load(radbridge)
    assoc = _assoc(radbridge.server.port)
    status, _ = assoc.send_n_create(_create_ds(), MPPS, UID)
    assert status.Status == 0x0000
    assert _step_status(radbridge) == "STARTED"
    status, _ = assoc.send_n_set(_set_ds("IN PROGRESS"), MPPS, UID)  # no transition: no message
    assert status.Status == 0x0000
    status, _ = assoc.send_n_set(_set_ds("COMPLETED"), MPPS, UID)
    assoc.release()
    assert status.Status == 0x0000
    assert _step_status(radbridge) == "COMPLETED"
    messages = _ris_messages(radbridge)
    assert [m.split("\r")[2].split("|")[5] for m in messages] == ["IP", "CM"]
    assert all(
        m.split("\r")[2].startswith("ORC|SC|PL1|") and "|ACC1|RP1|SPS1|" in m for m in messages
    )


def test_final_state_is_immutable(radbridge: Radbridge) -> None:
    _load(radbridge)
    assoc = _assoc(radbridge.server.port)
    assoc.send_n_create(_create_ds(), MPPS, UID)
    assoc.send_n_set(_set_ds("DISCONTINUED"), MPPS, UID)
    status, _ = assoc.send_n_set(_set_ds("COMPLETED"), MPPS, UID)
    assoc.release()
    assert status.Status == 0x0110
    assert _step_status(radbridge) == "DISCONTINUED"
    assert len(_ris_messages(radbridge)) == 2


def test_duplicate_create_unknown_set_and_bad_status_fail(radbridge: Radbridge) -> None:
    _load(radbridge)
    assoc = _assoc(radbridge.server.port)
    assoc.send_n_create(_create_ds(), MPPS, UID)
    duplicate, _ = assoc.send_n_create(_create_ds(), MPPS, UID)
    unknown, _ = assoc.send_n_set(_set_ds("COMPLETED"), MPPS, UID + ".9")
    bad, _ = assoc.send_n_create(_create_ds("COMPLETED"), MPPS, UID + ".8")
    assoc.release()
    assert (duplicate.Status, unknown.Status, bad.Status) == (0x0111, 0x0112, 0x0106)
    assert len(_ris_messages(radbridge)) == 1


def test_performed_series_are_recorded(radbridge: Radbridge) -> None:
    _load(radbridge)
    assoc = _assoc(radbridge.server.port)
    assoc.send_n_create(_create_ds(), MPPS, UID)
    assoc.send_n_set(_set_ds("COMPLETED"), MPPS, UID)
    assoc.release()
    rows = radbridge.db.read(
        lambda c: c.execute(
            select(mpps_series.c.series_instance_uid, mpps_series.c.instance_count)
        ).all()
    )
    assert [tuple(r) for r in rows] == [("1.2.3.1.1", 1)]
