"""Matching an image to its order (reference section 6): keys in order of trust, candidates, merges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select, update

import engine.domain.reconciler as reconciler_module
from engine.archive.part10 import dataset_offset
from engine.archive.structure import Encoding
from engine.domain.handlers import OrdersHandler, PatientsHandler
from engine.domain.instances import InstanceAttributes
from engine.domain.reconcile import MatchPolicy, OrderMatch, find_order, order_input, patient_conflict
from engine.domain.reconcile_tables import reconcile_requests
from engine.domain.reconciler import Prepared, Reconciler
from engine.domain.tables import orders, patient_other_ids, patients, procedure_steps, studies
from engine.mapping import load_mapping
from engine.reconcile.keys import MatchKeys
from engine.reconcile.rewrite import CoercedStream, read_header
from engine.store.database import Database

from .factories import apply_records, merge, order, patient

NOW = datetime.now(UTC)
POLICY = MatchPolicy(timedelta(hours=24))
ROOT = Path(__file__).resolve().parents[2]


def _order(db: Database, handler: OrdersHandler, placer: str, **fields: Any) -> Any:
    apply_records(db, handler, [patient(fields.get("patient_id", "P1")), order(placer, **fields)])
    return db.read(lambda c: c.execute(select(orders).where(orders.c.placer_order_number == placer)).one())


def _find(db: Database, keys: MatchKeys, now: datetime = NOW) -> OrderMatch | None:
    return db.read(lambda c: find_order(c, keys, now, POLICY))


def _set_status(db: Database, order_pk: int, status: str, at: datetime = NOW) -> None:
    db.writer.call(lambda c: c.execute(update(procedure_steps).where(procedure_steps.c.order_pk == order_pk)
                                       .values(status=status, updated_at=at)))


def test_the_sps_id_wins_over_the_study_uid(db: Database, orders_handler: OrdersHandler) -> None:
    a = _order(db, orders_handler, "PL1", scheduled_procedure_step_id="SPS-A", study_instance_uid="1.2.3.1")
    b = _order(db, orders_handler, "PL2", scheduled_procedure_step_id="SPS-B", study_instance_uid="1.2.3.2")
    found = _find(db, MatchKeys(("SPS-B",), "1.2.3.1"))
    assert found is not None and (found.order_pk, found.matched_by) == (b.id, "sps_id")
    found = _find(db, MatchKeys(("UNKNOWN",), "1.2.3.1"))
    assert found is not None and (found.order_pk, found.matched_by) == (a.id, "study_instance_uid")


def test_accession_needs_the_patient_id(db: Database, orders_handler: OrdersHandler) -> None:
    o = _order(db, orders_handler, "PL1", accession_number="ACC1")
    assert _find(db, MatchKeys((), "9.9", "ACC1", "")) is None
    assert _find(db, MatchKeys((), "9.9", "ACC1", "SOMEONE")) is None
    found = _find(db, MatchKeys((), "9.9", "ACC1", "P1", "HOSP"))
    assert found is not None and (found.order_pk, found.matched_by) == (o.id, "accession_number")


def test_only_open_and_recently_completed_steps_are_candidates(db: Database, orders_handler: OrdersHandler) -> None:
    o = _order(db, orders_handler, "PL1", study_instance_uid="1.2.3.1")
    keys = MatchKeys((), "1.2.3.1")
    for status in ("SCHEDULED", "ARRIVED", "STARTED"):
        _set_status(db, o.id, status)
        assert _find(db, keys) is not None, status
    _set_status(db, o.id, "COMPLETED", NOW - timedelta(hours=2))
    assert _find(db, keys) is not None
    _set_status(db, o.id, "COMPLETED", NOW - timedelta(hours=25))
    assert _find(db, keys) is None
    for status in ("DISCONTINUED", "CANCELED", "EXPIRED"):
        _set_status(db, o.id, status)
        assert _find(db, keys) is None, status


def test_a_key_naming_two_orders_matches_none(db: Database, orders_handler: OrdersHandler) -> None:
    _order(db, orders_handler, "PL1", scheduled_procedure_step_id="SAME")
    _order(db, orders_handler, "PL2", scheduled_procedure_step_id="SAME")
    assert _find(db, MatchKeys(("SAME",))) is None


def test_a_merged_away_patient_id_resolves_to_the_survivor(
    db: Database, orders_handler: OrdersHandler, patients_handler: PatientsHandler
) -> None:
    o = _order(db, orders_handler, "PL1", patient_id="TMP", accession_number="ACC1")
    apply_records(db, patients_handler, [patient("REAL"), merge("REAL", "TMP")])
    found = _find(db, MatchKeys((), "", "ACC1", "TMP", "HOSP"))
    assert found is not None and found.order_pk == o.id
    data = db.read(lambda c: order_input(c, found))
    assert (data["order"]["patient_id"], data["patient"]["patient_id"]) == ("REAL", "REAL")


def test_an_a47_replaced_patient_id_resolves_to_the_renamed_patient(
    db: Database, orders_handler: OrdersHandler, patients_handler: PatientsHandler
) -> None:
    o = _order(db, orders_handler, "PL1", patient_id="OLD", accession_number="ACC1")
    apply_records(db, patients_handler, [patient("NEW", event="A47"), merge("NEW", "OLD", kind="change_id")])
    found = _find(db, MatchKeys((), "", "ACC1", "OLD", "HOSP"))
    assert found is not None and found.order_pk == o.id


def test_order_input_carries_order_step_and_patient(db: Database, orders_handler: OrdersHandler) -> None:
    _order(db, orders_handler, "PL1", study_instance_uid="1.2.3.1", scheduled_procedure_step_id="SPS1")
    found = _find(db, MatchKeys((), "1.2.3.1"))
    assert found is not None
    data = db.read(lambda c: order_input(c, found))
    assert data["order"]["scheduled_procedure_step_id"] == "SPS1"
    assert data["order"]["requested_procedure_code"] == {
        "code_value": "CTHEAD", "coding_scheme_designator": "L", "code_meaning": "CT head"}
    assert (data["patient"]["patient_name"], data["patient"]["birth_date"]) == ("DOE^JANE", "19700101")


def _study(db: Database, uid: str, patient_id: str, patient_pk: int | None) -> None:
    db.writer.call(lambda c: c.execute(studies.insert().values(
        study_instance_uid=uid, patient_pk=patient_pk, patient_id=patient_id, issuer_of_patient_id="HOSP",
        number_of_instances=1, first_seen_at=NOW, last_seen_at=NOW)))


def test_patient_conflict_unless_the_id_was_merged_into_the_study_patient(
    db: Database, orders_handler: OrdersHandler, patients_handler: PatientsHandler
) -> None:
    apply_records(db, patients_handler, [patient("REAL"), patient("TMP"), patient("OTHER"), merge("REAL", "TMP")])
    real_pk = db.read(lambda c: c.execute(select(patients.c.id).where(patients.c.patient_id == "REAL")).scalar_one())
    _study(db, "1.2.3.9", "REAL", real_pk)

    def conflict(patient_id: str) -> str | None:
        return db.read(lambda c: patient_conflict(c, MatchKeys((), "1.2.3.9", "", patient_id, "HOSP"), None))

    assert conflict("REAL") is None
    assert conflict("TMP") is None  # merged into the study's patient
    assert conflict("OTHER") is not None
    assert conflict("UNKNOWN") is not None
    assert db.read(lambda c: patient_conflict(c, MatchKeys((), "7.7.7", "", "OTHER"), None)) is None  # new study


def test_a_changed_order_asks_for_reconciliation_only_when_unscheduled_studies_exist(
    db: Database, orders_handler: OrdersHandler
) -> None:
    _order(db, orders_handler, "PL1")
    assert db.read(lambda c: c.execute(select(reconcile_requests)).all()) == []
    _study(db, "1.2.3.9", "X", None)
    o = _order(db, orders_handler, "PL2")
    assert [r.order_pk for r in db.read(lambda c: c.execute(select(reconcile_requests)).all())] == [o.id]


def test_a_stored_study_linked_to_an_order_keeps_its_later_images(db: Database, orders_handler: OrdersHandler) -> None:
    o = _order(db, orders_handler, "PL1", study_instance_uid="1.2.3.1")
    step = db.read(lambda c: c.execute(select(procedure_steps.c.id).where(procedure_steps.c.order_pk == o.id))
                   .scalar_one())
    _study(db, "5.5.5", "MODALITY-ID", o.patient_pk)
    db.writer.call(lambda c: c.execute(update(studies).where(studies.c.study_instance_uid == "5.5.5")
                                       .values(order_pk=o.id, step_pk=step)))
    _set_status(db, o.id, "COMPLETED", NOW - timedelta(days=30))  # long done: no step candidate any more
    found = _find(db, MatchKeys((), "5.5.5", "", "MODALITY-ID"))
    assert found is not None and (found.order_pk, found.step_pk, found.matched_by) == (o.id, step, "study_link")
    keys = MatchKeys((), "5.5.5", "", "TYPED-WRONG", "HOSP")
    assert db.read(lambda c: patient_conflict(c, keys, found)) is None  # the study's own order decides


def test_order_input_lists_the_patients_other_ids_in_order(db: Database, orders_handler: OrdersHandler) -> None:
    _order(db, orders_handler, "PL1", study_instance_uid="1.2.3.1")
    pk = db.read(lambda c: c.execute(select(patients.c.id).where(patients.c.patient_id == "P1")).scalar_one())
    db.writer.call(lambda c: c.execute(patient_other_ids.insert(), [
        {"patient_pk": pk, "patient_id": "NHS1", "issuer": "NHS", "type_of_id": "NH"},
        {"patient_pk": pk, "patient_id": "MRN9", "issuer": "HOSP2", "type_of_id": "MR"}]))
    found = _find(db, MatchKeys((), "1.2.3.1"))
    assert found is not None
    data = db.read(lambda c: order_input(c, found))
    assert data["patient"]["other_ids"] == [{"patient_id": "NHS1", "issuer": "NHS", "type_of_id": "NH"},
                                           {"patient_id": "MRN9", "issuer": "HOSP2", "type_of_id": "MR"}]
    assert data["order"]["patient_id"] == "P1" and data["order"]["order_control"] == "NW"


def test_the_mapping_runs_again_when_the_order_or_its_patient_changed(
    db: Database, orders_handler: OrdersHandler, patients_handler: PatientsHandler
) -> None:
    _order(db, orders_handler, "PL1", study_instance_uid="1.2.3.1")
    reconciler = Reconciler(db, load_mapping(ROOT / "mappings" / "order-to-image.yaml"))
    found = _find(db, MatchKeys((), "1.2.3.1"))
    assert found is not None
    first = db.read(lambda c: reconciler.target(c, found))
    assert db.read(lambda c: reconciler.target(c, found)) is first  # same rows: the same output, not mapped again
    apply_records(db, patients_handler, [patient("P1", patient_name="DOE^JANE^RENAMED", event="A08")])
    again = db.read(lambda c: reconciler.target(c, found))
    assert (str(first["PatientName"]), str(again["PatientName"])) == ("DOE^JANE", "DOE^JANE^RENAMED")


def _image(path: Path, study_uid: str, n: int) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, "1.2.3.1.1"
    ds.PatientID, ds.PatientName, ds.Modality, ds.InstanceNumber = "P1", "DOE^J", "CT", n
    ds.StudyDescription = "as typed at the console"
    ds.BitsAllocated = 8
    ds.PixelData = bytes(range(256)) * 8
    ds.save_as(path, enforce_file_format=True)
    return path


def _prepare(reconciler: Reconciler, path: Path, now: datetime) -> Prepared:
    enc = Encoding(False, True)
    with path.open("rb") as spool:
        offset = dataset_offset(spool.read(4096))
        header = read_header(spool, offset, enc)
        return reconciler.prepare(spool, offset, enc, InstanceAttributes.from_dataset(header.dataset), "CT1", now,
                                  header, "f" * 64)


def test_the_images_of_a_series_are_coerced_once_and_the_rest_from_memory_alike(
    db: Database, orders_handler: OrdersHandler, tmp_path: Path, monkeypatch: Any
) -> None:
    _order(db, orders_handler, "PL1", study_instance_uid="1.2.3.9")
    mapping = load_mapping(ROOT / "mappings" / "order-to-image.yaml")
    shared = Reconciler(db, mapping)
    coerced: list[int] = []
    real = reconciler_module.coerce_header
    monkeypatch.setattr(reconciler_module, "coerce_header",
                        lambda ds, target, mod: coerced.append(1) or real(ds, target, mod))
    for n in range(4):
        path = _image(tmp_path / f"{n}.dcm", "1.2.3.9", n + 1)
        now = NOW + timedelta(seconds=n, microseconds=n)
        got, want = _prepare(shared, path, now), _prepare(Reconciler(db, mapping), path, now)
        assert isinstance(got.body, CoercedStream) and isinstance(want.body, CoercedStream)
        assert got.body.head == want.body.head  # the same bytes, this image's own UIDs and modification time
        assert (got.attrs, got.changed, got.match) == (want.attrs, want.changed, want.match)
        assert got.attrs.sop_instance_uid == InstanceAttributes.from_dataset(dcmread(path)).sop_instance_uid
        assert "PatientName" in got.changed and got.attrs.patient_name == "DOE^JANE"
    assert len(coerced) == 1 + 4  # the shared reconciler coerced the first image only; each fresh one its own


def test_an_image_no_order_matches_under_a_merged_away_id_is_coerced_to_the_survivor(
    db: Database, patients_handler: PatientsHandler, tmp_path: Path
) -> None:
    """The trauma case's late image: acquired under the temporary id, sent after the A40 with no order to
    match (an unscheduled acquisition); it shows the real patient at once, as a correction would."""
    apply_records(db, patients_handler, [patient("P1", patient_name="DOE^TRAUMA"),
                                         patient("REAL9", patient_name="SMITH^JOHN", birth_date="19600202", sex="M"),
                                         merge("REAL9", "P1")])
    reconciler = Reconciler(db, load_mapping(ROOT / "mappings" / "order-to-image.yaml"))
    got = _prepare(reconciler, _image(tmp_path / "late.dcm", "1.2.3.77", 1), NOW)
    assert got.match is None and isinstance(got.body, CoercedStream)
    assert (got.attrs.patient_id, got.attrs.patient_name) == ("REAL9", "SMITH^JOHN")
    assert {"PatientID", "PatientName"} <= set(got.changed)
    assert got.attrs.study_instance_uid == "1.2.3.77"  # study-level values stay as received: there is no order


def test_an_image_no_order_matches_under_a_current_or_unknown_id_is_stored_as_received(
    db: Database, patients_handler: PatientsHandler, tmp_path: Path
) -> None:
    reconciler = Reconciler(db, load_mapping(ROOT / "mappings" / "order-to-image.yaml"))
    unknown = _prepare(reconciler, _image(tmp_path / "unknown.dcm", "1.2.3.78", 1), NOW)
    apply_records(db, patients_handler, [patient("P1", patient_name="DOE^REGISTERED")])
    current = _prepare(reconciler, _image(tmp_path / "current.dcm", "1.2.3.79", 1), NOW)
    for got in (unknown, current):
        assert got.match is None and not isinstance(got.body, CoercedStream) and got.changed == ()
        assert (got.attrs.patient_id, got.attrs.patient_name) == ("P1", "DOE^J")


def test_an_id_held_under_two_issuers_is_not_taken_for_a_merged_away_one(
    db: Database, patients_handler: PatientsHandler, tmp_path: Path
) -> None:
    """Review: P1@HOSP is current, P1@CLINIC was merged into REAL9; an image of P1 without an issuer must not
    be rewritten to REAL9 (it may well be HOSP's patient)."""
    apply_records(db, patients_handler, [patient("P1"), patient("P1", issuer="CLINIC"),
                                         patient("REAL9", issuer="CLINIC", patient_name="SMITH^JOHN"),
                                         {**merge("REAL9", "P1"), "issuer": "CLINIC", "prior_issuer": "CLINIC"}])
    reconciler = Reconciler(db, load_mapping(ROOT / "mappings" / "order-to-image.yaml"))
    got = _prepare(reconciler, _image(tmp_path / "p1.dcm", "1.2.3.80", 1), NOW)
    assert got.changed == () and (got.attrs.patient_id, got.attrs.patient_name) == ("P1", "DOE^J")


def test_an_a47_replaced_id_without_an_order_is_coerced_to_the_renamed_patient(
    db: Database, patients_handler: PatientsHandler, tmp_path: Path
) -> None:
    apply_records(db, patients_handler, [patient("P1"), patient("NEW", event="A47", patient_name="DOE^RENAMED"),
                                         merge("NEW", "P1", kind="change_id")])
    reconciler = Reconciler(db, load_mapping(ROOT / "mappings" / "order-to-image.yaml"))
    got = _prepare(reconciler, _image(tmp_path / "p1.dcm", "1.2.3.81", 1), NOW)
    assert got.match is None and (got.attrs.patient_id, got.attrs.patient_name) == ("NEW", "DOE^RENAMED")
