"""MPPS with pynetdicom as the SCU: transitions, immutability, one RIS message per transition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import select

from channels.dicom.server import start_dicom_server
from engine.domain.tables import mpps_series, procedure_steps
from engine.store.database import Database
from engine.store.schema import outbox

from ..domain.factories import apply_records, order, patient
from .conftest import Radbridge, make_config
from .mpps_datasets import n_create_dataset, n_set_dataset, performed_series

MPPS = "1.2.840.10008.3.1.2.3.3"
UID = "1.2.826.0.1.3680043.8.498.1"


def _assoc(port: int) -> Any:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MPPS)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    return assoc


def _create_ds(status: str = "IN PROGRESS") -> Dataset:
    return n_create_dataset(status)


def _set_ds(status: str) -> Dataset:
    return n_set_dataset(status, performed_series("1.2.3.1.1", "1.2.3.1.1.1"))


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


def test_the_status_message_names_the_order_with_its_namespaces_as_the_ris_sent_them(radbridge: Radbridge) -> None:
    """The order came as ORC-2 ``PL1^RIS``, ORC-3 ``FPL1^PACSRIS``; the status message said ``ORC|SC|PL1|FPL1|``
    (new-user campaign), so a RIS that knows its orders by number and namespace found none."""
    apply_records(radbridge.db, radbridge.orders, [patient(), order(
        "PL1", placer_order_namespace="RIS", filler_order_namespace="PACSRIS", accession_number="ACC1",
        requested_procedure_id="RP1", scheduled_procedure_step_id="SPS1", study_instance_uid="1.2.3.1")])
    assoc = _assoc(radbridge.server.port)
    status, _ = assoc.send_n_create(_create_ds(), MPPS, UID)
    assoc.release()
    assert status.Status == 0x0000
    (message,) = _ris_messages(radbridge)
    orc, obr = message.split("\r")[2:4]
    assert orc.startswith("ORC|SC|PL1^RIS|FPL1^PACSRIS||IP|")
    assert obr.startswith("OBR|1|PL1^RIS|FPL1^PACSRIS|")


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


def _stored(rb: Radbridge) -> Dataset:
    from io import BytesIO

    from pydicom.filereader import read_dataset

    from engine.domain.tables import mpps

    raw = rb.db.read(lambda c: c.execute(select(mpps.c.attributes)).scalar_one())
    return read_dataset(BytesIO(raw), is_implicit_VR=False, is_little_endian=True)


def _mpps_rows(rb: Radbridge) -> int:
    from sqlalchemy import func

    from engine.domain.tables import mpps

    return int(rb.db.read(lambda c: c.execute(select(func.count()).select_from(mpps)).scalar_one()))


def test_n_create_with_only_the_status_is_missing_attributes(radbridge: Radbridge) -> None:
    _load(radbridge)
    only_status = Dataset()
    only_status.PerformedProcedureStepStatus = "IN PROGRESS"
    assoc = _assoc(radbridge.server.port)
    status, _ = assoc.send_n_create(only_status, MPPS, UID)
    assoc.release()
    assert status.Status == 0x0120
    assert "ScheduledStepAttributesSequence" in status.ErrorComment
    assert (_mpps_rows(radbridge), _step_status(radbridge), _ris_messages(radbridge)) == (0, "SCHEDULED", [])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda ds: delattr(ds, "PerformedStationAETitle"), 0x0120),
        (lambda ds: delattr(ds.ScheduledStepAttributesSequence[0], "StudyInstanceUID"), 0x0120),
        (lambda ds: setattr(ds, "PerformedProcedureStepStartDate", ""), 0x0121),
        (lambda ds: setattr(ds, "Modality", ""), 0x0121),
    ],
    ids=["station AE absent", "study UID absent in the item", "start date empty", "modality empty"],
)
def test_n_create_refuses_type_1_attributes_absent_or_empty(radbridge: Radbridge, change: Any, expected: int) -> None:
    _load(radbridge)
    ds = _create_ds()
    change(ds)
    assoc = _assoc(radbridge.server.port)
    status, _ = assoc.send_n_create(ds, MPPS, UID)
    assoc.release()
    assert status.Status == expected
    assert _mpps_rows(radbridge) == 0


def test_n_create_without_type_2_attributes_is_accepted_unless_the_site_requires_them(tmp_path: Path) -> None:
    def create(require: bool) -> int:
        config = make_config(tmp_path / str(require), mpps={"require_type2_attributes": require})
        db = Database(f"sqlite:///{tmp_path / f'{require}.db'}", sqlite_synchronous="NORMAL")
        db.migrate()
        server = start_dicom_server(config, db)
        try:
            ds = _create_ds()
            del ds.PatientName, ds.PerformedLocation
            assoc = _assoc(server.port)
            status, _ = assoc.send_n_create(ds, MPPS, UID)
            assoc.release()
            return int(status.Status)
        finally:
            server.stop()
            db.close()

    assert (create(False), create(True)) == (0x0000, 0x0120)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("PatientName", "OTHER^PATIENT"), ("PatientID", "P2"), ("PatientBirthDate", "19990101"),
     ("ScheduledStepAttributesSequence", []), ("Modality", "MR")],
)  # fmt: skip
def test_n_set_may_not_change_what_only_n_create_sets(radbridge: Radbridge, keyword: str, value: Any) -> None:
    _load(radbridge)
    assoc = _assoc(radbridge.server.port)
    assoc.send_n_create(_create_ds(), MPPS, UID)
    change = _set_ds("COMPLETED")
    setattr(change, keyword, value)
    status, _ = assoc.send_n_set(change, MPPS, UID)
    assoc.release()
    assert status.Status == 0x0105  # PS3.7 C.5.17 No Such Attribute
    assert status.AttributeIdentifierList == tag_for_keyword(keyword)
    stored = _stored(radbridge)
    assert (stored.PatientName, stored.PatientID, stored.PerformedProcedureStepStatus) == (
        "DOE^JANE", "P1", "IN PROGRESS"
    )
    assert _step_status(radbridge) == "STARTED"
    assert len(_ris_messages(radbridge)) == 1


def test_n_set_series_items_need_their_type_1_attributes(radbridge: Radbridge) -> None:
    _load(radbridge)
    assoc = _assoc(radbridge.server.port)
    assoc.send_n_create(_create_ds(), MPPS, UID)
    change = _set_ds("COMPLETED")
    del change.PerformedSeriesSequence[0].SeriesInstanceUID
    status, _ = assoc.send_n_set(change, MPPS, UID)
    assoc.release()
    assert status.Status == 0x0120
    assert _step_status(radbridge) == "STARTED"


def test_n_set_after_the_final_state_names_the_reason(radbridge: Radbridge) -> None:
    _load(radbridge)
    assoc = _assoc(radbridge.server.port)
    assoc.send_n_create(_create_ds(), MPPS, UID)
    assoc.send_n_set(_set_ds("COMPLETED"), MPPS, UID)
    status, _ = assoc.send_n_set(_set_ds("COMPLETED"), MPPS, UID)
    assoc.release()
    assert (status.Status, status.ErrorID) == (0x0110, 0xA710)  # PS3.4 Table F.7.2-2
