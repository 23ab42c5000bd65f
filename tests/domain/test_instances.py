"""The instance level of the study index (SQLite and PostgreSQL): filing, order match, duplicates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import select

from engine.config.models import EngineConfig
from engine.domain.handlers import OrdersHandler, order_policy
from engine.domain.instance_tables import instance_versions, instances
from engine.domain.instances import (
    IndexOutcome,
    InstanceAttributes,
    StoredFile,
    index_instance,
    is_valid_uid,
)
from engine.domain.tables import orders, series, studies
from engine.store.database import Database
from tests.conftest import migrated

from .factories import apply_records, order, patient

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[Database]:
    yield from migrated(db_url)


def _attrs(sop: str = "1.2.9.1", study: str = "1.2.9", series_uid: str = "1.2.9.0", **kw: Any) -> InstanceAttributes:
    return InstanceAttributes("1.2.840.10008.5.1.4.1.1.2", sop, study, series_uid, patient_id="P77",
                              patient_name="DOE^JANE", modality="CT", series_number=3, instance_number=1, **kw)


def _file(sha: str = "a" * 64, path: str = "x/y/1.dcm") -> StoredFile:
    return StoredFile("primary", path, 1000, sha, "1.2.840.10008.1.2.1", "CT1", NOW)


def _index(db: Database, attrs: InstanceAttributes, stored: StoredFile, policy: Any = "replace") -> IndexOutcome:
    result: IndexOutcome = db.writer.call(lambda c: index_instance(c, attrs, stored, policy))
    return result


def _rows(db: Database, table: Any) -> list[Any]:
    return db.read(lambda c: c.execute(select(table).order_by(table.c.id)).all())


def test_first_instance_creates_study_and_series_as_received(store: Database) -> None:
    assert _index(store, _attrs(study_date="20261205", accession_number="A1"), _file()) is IndexOutcome.STORED
    (study,) = _rows(store, studies)
    assert (study.patient_id, study.patient_name, study.study_date, study.accession_number) == (
        "P77", "DOE^JANE", "20261205", "A1")
    assert study.order_pk is None and study.patient_pk is None  # unscheduled, unknown patient
    assert (study.number_of_series, study.number_of_instances, study.modalities_in_study) == (1, 1, "CT")
    (ser,) = _rows(store, series)
    assert (ser.series_number, ser.number_of_instances, ser.modality) == (3, 1, "CT")
    (inst,) = _rows(store, instances)
    assert (inst.study_pk, inst.series_pk, inst.sha256, inst.received_from_ae) == (study.id, ser.id, "a" * 64, "CT1")


def test_second_instance_counts_in_the_same_series(store: Database) -> None:
    _index(store, _attrs(), _file())
    _index(store, _attrs(sop="1.2.9.2"), _file("b" * 64, "x/y/2.dcm"))
    (study,) = _rows(store, studies)
    assert study.number_of_instances == 2
    assert [s.number_of_instances for s in _rows(store, series)] == [2]


@pytest.mark.parametrize("by", ["study_instance_uid", "accession_number"])
def test_study_matching_an_order_is_scheduled(store: Database, engine_config: EngineConfig, by: str) -> None:
    apply_records(store, OrdersHandler(order_policy(engine_config)), [patient("P77"), order(
        "PL1", patient_id="P77", accession_number="ACC1", study_instance_uid="1.2.3.1",
        scheduled_procedure_step_id="SPS1", requested_procedure_id="RP1")])  # fmt: skip
    attrs = _attrs(study="1.2.3.1") if by == "study_instance_uid" else _attrs(accession_number="ACC1")
    _index(store, attrs, _file())
    (study,) = _rows(store, studies)
    (the_order,) = _rows(store, orders)
    assert study.order_pk == the_order.id and study.patient_pk == the_order.patient_pk


def test_same_content_again_is_unchanged(store: Database) -> None:
    _index(store, _attrs(), _file())
    before = _rows(store, instances), _rows(store, studies)
    later = replace(_file(path="x/y/other.dcm"), received_at=datetime(2027, 1, 1, tzinfo=UTC))
    assert _index(store, _attrs(), later) is IndexOutcome.UNCHANGED
    assert (_rows(store, instances), _rows(store, studies)) == before


def test_new_content_replaces_and_records_the_old_version(store: Database) -> None:
    _index(store, _attrs(), _file())
    assert _index(store, _attrs(), _file("b" * 64, "x/y/1.b.dcm")) is IndexOutcome.REPLACED
    (inst,) = _rows(store, instances)
    assert (inst.sha256, inst.path, inst.versions) == ("b" * 64, "x/y/1.b.dcm", 2)
    (old,) = _rows(store, instance_versions)
    assert (old.sha256, old.path, old.instance_pk) == ("a" * 64, "x/y/1.dcm", inst.id)
    assert [s.number_of_instances for s in _rows(store, series)] == [1]


def test_new_content_under_reject_changes_nothing(store: Database) -> None:
    _index(store, _attrs(), _file())
    before = _rows(store, instances)
    assert _index(store, _attrs(), _file("b" * 64), "reject") is IndexOutcome.REJECTED
    assert _rows(store, instances) == before and _rows(store, instance_versions) == []


def test_attributes_read_tolerantly() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    ds[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 2, b"1A", 0, False, True)  # a bad IS, as sent
    attrs = InstanceAttributes.from_dataset(ds)
    assert (attrs.sop_instance_uid, attrs.series_number, attrs.study_instance_uid) == ("1.2.3", None, "")


@pytest.mark.parametrize(("uid", "valid"), [
    ("1.2.840.10008.1.2", True), ("0.1", True), ("", False), ("1.02", False), ("1..2", False),
    ("../../etc", False), ("1.2.", False), ("1" * 65, False), ("dccc9599", False),
])  # fmt: skip
def test_uid_validity(uid: str, valid: bool) -> None:
    assert is_valid_uid(uid) is valid


def test_replacement_filed_under_another_series_moves_the_instance(store: Database) -> None:
    _index(store, _attrs(), _file())
    _index(store, _attrs(sop="1.2.9.2"), _file("c" * 64, "x/y/2.dcm"))
    assert _index(store, _attrs(series_uid="1.2.9.5"), _file("b" * 64, "x/z/1.dcm")) is IndexOutcome.REPLACED
    moved = next(i for i in _rows(store, instances) if i.sop_instance_uid == "1.2.9.1")
    (new_series,) = [s for s in _rows(store, series) if s.series_instance_uid == "1.2.9.5"]
    assert moved.series_pk == new_series.id and new_series.number_of_instances == 1
    (study,) = _rows(store, studies)
    assert study.number_of_series == 2


def test_images_complete_the_study_and_series_mpps_announced(store: Database) -> None:
    from engine.domain.studies import PerformedSeries, StudyRef, upsert_series, upsert_study

    def announce(conn: Any) -> None:  # what an MPPS N-SET COMPLETED leaves: the series with 5 images
        study_pk = upsert_study(conn, StudyRef("1.2.9"), None, NOW)
        upsert_series(conn, study_pk, PerformedSeries("1.2.9.0", "CT", "AXIAL", 5), None, NOW)

    store.writer.call(announce)
    _index(store, _attrs(), _file())
    (study,) = _rows(store, studies)
    (ser,) = _rows(store, series)
    assert (ser.number_of_instances, ser.series_number, ser.series_description) == (5, 3, "AXIAL")
    assert (study.patient_id, study.number_of_instances) == ("P77", 5)
    assert len(_rows(store, instances)) == 1
