"""The study index from MPPS, and A40/A47 moving studies with the patient (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from engine.config.models import EngineConfig
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.mpps import MppsPolicy, create_mpps, set_mpps
from engine.domain.tables import (
    mpps,
    orders,
    patient_merges,
    patients,
    procedure_steps,
    series,
    studies,
)
from engine.errors import HL7ApplicationError
from engine.store.database import Database
from tests.conftest import migrated

from .factories import apply_records, merge, order, patient

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[Database]:
    """A migrated database on SQLite and on PostgreSQL (this folder's ``db`` is SQLite only)."""
    yield from migrated(db_url)


@pytest.fixture
def handlers(engine_config: EngineConfig) -> tuple[OrdersHandler, PatientsHandler]:
    return OrdersHandler(order_policy(engine_config)), PatientsHandler(patient_policy(engine_config))


def _order(db: Database, handler: OrdersHandler, pid: str, n: int) -> None:
    apply_records(db, handler, [patient(pid), order(
        f"PL{n}", patient_id=pid, accession_number=f"ACC{n}", study_instance_uid=f"1.2.3.{n}",
        scheduled_procedure_step_id=f"SPS{n}", requested_procedure_id=f"RP{n}",
    )])  # fmt: skip


def _mpps_ds(pid: str, *studies_: tuple[str, str]) -> Dataset:
    ds = Dataset()
    items = []
    for uid, accession in studies_:
        item = Dataset()
        item.StudyInstanceUID, item.AccessionNumber = uid, accession
        items.append(item)
    ds.ScheduledStepAttributesSequence = items
    ds.PatientID, ds.IssuerOfPatientID = pid, "HOSP"
    ds.Modality = "CT"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepID, ds.PerformedStationAETitle = "PPS1", "CT1"  # Type 1 (PS3.4 F.7.2-1)
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20261122", "093000"
    return ds


def _series_ds(*counts: int) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    items = []
    for n, count in enumerate(counts, start=1):
        item = Dataset()
        item.SeriesInstanceUID = f"9.9.{n}"
        item.SeriesDescription = f"series {n}"
        item.ProtocolName = "HEAD"  # Type 1 in a performed series item
        refs = []
        for i in range(count):
            ref = Dataset()
            ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            ref.ReferencedSOPInstanceUID = f"9.9.{n}.{i}"
            refs.append(ref)
        item.ReferencedImageSequence = refs
        items.append(item)
    ds.PerformedSeriesSequence = items
    return ds


def _create(db: Database, uid: str, ds: Dataset) -> None:
    db.writer.call(lambda c: create_mpps(c, uid, ds, "CT1", MppsPolicy(), NOW))


def _set(db: Database, uid: str, ds: Dataset) -> None:
    db.writer.call(lambda c: set_mpps(c, uid, ds, MppsPolicy(), NOW))


def _rows(db: Database, stmt: Any) -> list[Any]:
    return list(db.read(lambda c: c.execute(stmt).all()))


def _pk(db: Database, pid: str) -> int:
    return int(db.read(lambda c: c.execute(
        select(patients.c.id).where(patients.c.patient_id == pid)).scalar_one()))  # fmt: skip


def _study(db: Database, uid: str) -> Any:
    return db.read(lambda c: c.execute(
        select(studies).where(studies.c.study_instance_uid == uid)).one())  # fmt: skip


def test_mpps_indexes_the_study_of_its_order_and_its_series(
    store: Database, handlers: tuple[OrdersHandler, PatientsHandler]
) -> None:
    _order(store, handlers[0], "P1", 1)
    _create(store, "1.5.1", _mpps_ds("P1", ("1.2.3.1", "ACC1")))
    _set(store, "1.5.1", _series_ds(3, 2))
    study = _study(store, "1.2.3.1")
    order_pk = _rows(store, select(orders.c.id))[0][0]
    assert (study.patient_pk, study.order_pk, study.accession_number) == (
        _pk(store, "P1"), order_pk, "ACC1")  # fmt: skip
    assert (study.number_of_series, study.number_of_instances) == (2, 5)
    assert study.modalities_in_study == "CT"
    rows = _rows(store, select(series.c.series_instance_uid, series.c.study_pk,
                               series.c.number_of_instances).order_by(series.c.id))  # fmt: skip
    assert [tuple(r) for r in rows] == [("9.9.1", study.id, 3), ("9.9.2", study.id, 2)]


def test_group_case_indexes_every_study_and_files_series_under_the_first(
    store: Database, handlers: tuple[OrdersHandler, PatientsHandler]
) -> None:
    _order(store, handlers[0], "P1", 1)
    _order(store, handlers[0], "P1", 2)
    _create(store, "1.5.1", _mpps_ds("P1", ("1.2.3.1", "ACC1"), ("1.2.3.2", "ACC2")))
    _set(store, "1.5.1", _series_ds(1))
    first, second = _study(store, "1.2.3.1"), _study(store, "1.2.3.2")
    assert (first.number_of_series, second.number_of_series) == (1, 0)
    assert first.order_pk != second.order_pk and second.order_pk is not None


def test_unscheduled_mpps_study_belongs_to_the_patient_id(
    store: Database, handlers: tuple[OrdersHandler, PatientsHandler]
) -> None:
    apply_records(store, handlers[1], [patient("P7")])
    _create(store, "1.5.1", _mpps_ds("P7", ("1.2.3.77", "")))
    _create(store, "1.5.2", _mpps_ds("NOBODY", ("1.2.3.78", "")))
    assert _study(store, "1.2.3.77").patient_pk == _pk(store, "P7")
    assert _study(store, "1.2.3.77").order_pk is None
    assert _study(store, "1.2.3.78").patient_pk is None


def test_a40_moves_orders_steps_mpps_and_studies_to_the_survivor(
    store: Database, handlers: tuple[OrdersHandler, PatientsHandler]
) -> None:
    _order(store, handlers[0], "TMP", 1)
    _create(store, "1.5.1", _mpps_ds("TMP", ("1.2.3.1", "ACC1")))
    _create(store, "1.5.2", _mpps_ds("TMP", ("1.2.3.50", "")))  # unscheduled study
    apply_records(store, handlers[1], [patient("REAL"), merge("REAL", "TMP")])
    real, tmp = _pk(store, "REAL"), _pk(store, "TMP")
    assert {r[0] for r in _rows(store, select(orders.c.patient_pk))} == {real}
    assert {r[0] for r in _rows(store, select(mpps.c.patient_pk))} == {real}
    assert {r[0] for r in _rows(store, select(studies.c.patient_pk))} == {real}
    steps = select(orders.c.patient_pk).join(procedure_steps, procedure_steps.c.order_pk == orders.c.id)
    assert {r[0] for r in _rows(store, steps)} == {real}
    prior = _rows(store, select(patients).where(patients.c.id == tmp))[0]
    assert (prior.status, prior.merged_into_id) == ("MERGED", real)
    link = _rows(store, select(patient_merges.c.kind, patient_merges.c.prior_pk,
                               patient_merges.c.survivor_pk))  # fmt: skip
    assert [tuple(r) for r in link] == [("merge", tmp, real)]


def test_a40_pairs_apply_together_or_not_at_all(
    store: Database, handlers: tuple[OrdersHandler, PatientsHandler]
) -> None:
    _order(store, handlers[0], "A", 1)
    _create(store, "1.5.1", _mpps_ds("A", ("1.2.3.1", "ACC1")))
    with pytest.raises(HL7ApplicationError):
        apply_records(store, handlers[1], [merge("C", "A"), merge("C", "C")])
    a = _pk(store, "A")
    assert _study(store, "1.2.3.1").patient_pk == a
    assert {r[0] for r in _rows(store, select(orders.c.patient_pk))} == {a}
    assert _rows(store, select(patients.c.status).where(patients.c.id == a))[0][0] == "ACTIVE"
    assert _rows(store, select(patient_merges)) == []


def test_several_pairs_move_each_prior_study(
    store: Database, handlers: tuple[OrdersHandler, PatientsHandler]
) -> None:
    _order(store, handlers[0], "A", 1)
    _order(store, handlers[0], "B", 2)
    _create(store, "1.5.1", _mpps_ds("A", ("1.2.3.1", "ACC1")))
    _create(store, "1.5.2", _mpps_ds("B", ("1.2.3.2", "ACC2")))
    apply_records(store, handlers[1], [patient("C"), merge("C", "A"), merge("C", "B")])
    assert {r[0] for r in _rows(store, select(studies.c.patient_pk))} == {_pk(store, "C")}


def test_dicom_for_a_merged_id_attaches_to_the_survivor(
    store: Database, handlers: tuple[OrdersHandler, PatientsHandler]
) -> None:
    apply_records(store, handlers[1], [patient("TMP"), patient("REAL"), merge("REAL", "TMP")])
    _create(store, "1.5.1", _mpps_ds("TMP", ("1.2.3.60", "")))  # modality still has the old id
    assert _study(store, "1.2.3.60").patient_pk == _pk(store, "REAL")
    assert _rows(store, select(mpps.c.patient_pk))[0][0] == _pk(store, "REAL")
    with pytest.raises(HL7ApplicationError) as info:  # while HL7 for it is rejected
        apply_records(store, handlers[0], [patient("TMP"), order("PL9", patient_id="TMP")])
    assert info.value.code == 204


def test_a47_keeps_studies_and_dicom_with_the_old_id_follows(
    store: Database, handlers: tuple[OrdersHandler, PatientsHandler]
) -> None:
    _order(store, handlers[0], "OLD", 1)
    _create(store, "1.5.1", _mpps_ds("OLD", ("1.2.3.1", "ACC1")))
    pk = _pk(store, "OLD")
    apply_records(store, handlers[1], [merge("NEW", "OLD", kind="change_id")])
    _create(store, "1.5.2", _mpps_ds("OLD", ("1.2.3.61", "")))
    assert _pk(store, "NEW") == pk
    assert _study(store, "1.2.3.1").patient_pk == pk
    assert _study(store, "1.2.3.61").patient_pk == pk
