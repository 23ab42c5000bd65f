"""Reconciliation on the wire: DCMTK storescu sends corpus images after the order was created."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select

from engine.audit import audit_events
from engine.cli.studies import link_to_accession
from engine.domain.handlers import OrdersHandler, order_policy
from engine.domain.instance_tables import instance_versions
from engine.domain.late_reconcile import late_jobs
from engine.domain.tables import studies
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import pixel_data, running_scp, storescu
from tests.domain.factories import apply_records, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]


def _study(corpus: Path) -> list[Path]:
    return sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[:3]


def _order_for_corpus(scp: object, accession: str = "MOF5026") -> None:
    handler = OrdersHandler(order_policy(scp.config))  # type: ignore[attr-defined]
    apply_records(scp.db, handler, [  # type: ignore[attr-defined]
        patient("583295", patient_name="DÖE^JOHN", birth_date="19600101", sex="M"),
        order("PL1", patient_id="583295", accession_number=accession, modality="MR",
              requested_procedure_description="MR LEFT WRIST", scheduled_station_ae_title="CT1"),
    ])


def _study_row(scp: object) -> object:
    return scp.db.read(lambda c: c.execute(select(studies)).one())  # type: ignore[attr-defined]


def _dciodvfy_errors(path: Path) -> set[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line.split(" - ", 1)[-1] for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")}


def test_ordered_images_are_coerced_recorded_and_linked(tmp_path: Path, corpus: Path) -> None:
    files = _study(corpus)
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        _order_for_corpus(scp)
        done = storescu(scp.port, files)
        assert done.returncode == 0, done.stderr[-2000:]
        row = _study_row(scp)
        assert row.order_pk is not None and row.step_pk is not None  # type: ignore[attr-defined]
        for src in files:
            stored = scp.stored_path(str(dcmread(src, stop_before_pixels=True).SOPInstanceUID))
            ds = dcmread(stored)
            assert (str(ds.PatientName), ds.SpecificCharacterSet, ds.PatientBirthDate) == (
                "DÖE^JOHN", "ISO_IR 192", "19600101")
            assert ds.StudyDescription == "MR LEFT WRIST"
            (item,) = ds.OriginalAttributesSequence
            assert item.ReasonForTheAttributeModification == "COERCE"
            assert item.SourceOfPreviousValues == "CT1"
            assert str(item.ModifiedAttributesSequence[0].PatientName) == "DOE^J1"
            assert pixel_data(stored) == pixel_data(src)
            dump = subprocess.run(["dcmdump", str(stored)], capture_output=True, text=True, timeout=60).stdout
            assert "(0010,0010) PN [DÖE^JOHN]" in dump and "COERCE" in dump
            assert _dciodvfy_errors(stored) <= _dciodvfy_errors(src)
        stored_files = [str(scp.archive / r.path) for r in scp.instances()]
        ent = subprocess.run(["dcentvfy", *stored_files], capture_output=True, text=True, timeout=60)
        assert "Error" not in ent.stdout + ent.stderr, ent.stdout + ent.stderr
        again = storescu(scp.port, files[:1])  # the same image resent: recognised, nothing changes
        assert again.returncode == 0 and len(scp.instances()) == len(files)
        assert all(r.versions == 1 for r in scp.instances())


def test_an_unscheduled_study_is_reconciled_when_its_order_arrives(tmp_path: Path, corpus: Path) -> None:
    files = _study(corpus)
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        assert storescu(scp.port, files).returncode == 0
        assert _study_row(scp).order_pk is None  # type: ignore[attr-defined]
        _order_for_corpus(scp)
        (job,) = late_jobs(scp.db, scp.config)
        assert job.run() == len(files)
        assert job.run() == 0  # idempotent: nothing pending, the study is linked
        row = _study_row(scp)
        assert row.order_pk is not None and row.patient_name == "DÖE^JOHN"  # type: ignore[attr-defined]
        for src in files:
            ds = dcmread(scp.stored_path(str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)))
            assert str(ds.PatientName) == "DÖE^JOHN" and len(ds.OriginalAttributesSequence) == 1
            assert ds.PixelData == dcmread(src).PixelData
        versions = scp.db.read(lambda c: c.execute(select(instance_versions)).all())
        assert len(versions) == len(files)


def test_studies_link_reconciles_with_an_operator_chosen_order_and_is_audited(tmp_path: Path, corpus: Path) -> None:
    files = _study(corpus)
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        assert storescu(scp.port, files).returncode == 0
        handler = OrdersHandler(order_policy(scp.config))
        apply_records(scp.db, handler, [patient("P9", patient_name="REAL^PATIENT"),
                                        order("PL9", patient_id="P9", accession_number="ACC9", modality="MR")])
        assert _study_row(scp).order_pk is None  # type: ignore[attr-defined]
        study_uid = _study_row(scp).study_instance_uid  # type: ignore[attr-defined]
        assert link_to_accession(scp.db, scp.config, study_uid, "ACC9") == len(files)
        row = _study_row(scp)
        assert (row.patient_id, row.order_pk is not None) == ("P9", True)  # type: ignore[attr-defined]
        events = scp.db.read(lambda c: c.execute(select(audit_events).where(
            audit_events.c.action == "study.link")).all())
        assert [e.object_id for e in events] == [study_uid]


def test_an_image_of_a_stored_study_under_another_patient_id_is_refused(tmp_path: Path, corpus: Path) -> None:
    first, second = _study(corpus)[:2]
    other = dcmread(second)
    other.PatientID = "SOMEONE-ELSE"
    changed = tmp_path / "other.dcm"
    other.save_as(changed)
    with running_scp(tmp_path / "reject", mappings_dir=ROOT / "mappings") as scp:
        assert storescu(scp.port, [first]).returncode == 0
        refused = storescu(scp.port, [changed])
        assert refused.returncode != 0
        assert len(scp.instances()) == 1 and [q.status for q in scp.quarantined()] == [0xC230]
    with running_scp(tmp_path / "accept", mappings_dir=ROOT / "mappings",
                     reconcile={"patient_id_mismatch": "accept"}) as scp:
        assert storescu(scp.port, [first]).returncode == 0
        assert storescu(scp.port, [changed]).returncode == 0
        assert len(scp.instances()) == 2



def _first_two(corpus: Path, tmp_path: Path, change: Callable[[int, Dataset], None]) -> list[Path]:
    """The corpus study's first two images, each changed by ``change(n, ds)``, written to ``tmp_path``."""
    paths = []
    for n, src in enumerate(_study(corpus)[:2]):
        ds = dcmread(src)
        change(n, ds)
        paths.append(tmp_path / f"changed{n}.dcm")
        ds.save_as(paths[-1])
    return paths


def test_images_of_one_study_with_the_same_overlong_patient_id_are_all_stored(tmp_path: Path, corpus: Path) -> None:
    """A Patient ID longer than LO's 64 characters (a modality that writes it anyway), the same in two images of
    one study, sent on one association: the second was refused 0xC230 as another patient's, because the study
    row holds the id as indexed (its first 64 characters) and the image's key was compared whole."""
    paths = _first_two(corpus, tmp_path, lambda n, ds: setattr(ds, "PatientID", "X" * 30 + "Y" * 40))
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        done = storescu(scp.port, paths)
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(scp.instances()) == 2 and scp.quarantined() == []
        for path in paths:  # stored as received (no order): the whole id kept in the file
            assert dcmread(scp.stored_path(str(dcmread(path).SOPInstanceUID))).PatientID == "X" * 30 + "Y" * 40


@pytest.mark.parametrize("first_has_issuer", [True, False], ids=["issuer on the first", "issuer on the second"])
def test_an_issuer_of_patient_id_in_only_some_images_of_a_study_is_no_conflict(tmp_path: Path, corpus: Path,
                                                                             first_has_issuer: bool) -> None:
    """Two images of one study with the same Patient ID, one with IssuerOfPatientID (a modality that copies it
    from the worklist) and one without (a workstation's image). An image without an issuer joined a study that
    had one, but an image with one was refused 0xC230 from a study stored without: the same two images were
    stored or refused depending on which arrived first."""
    def issuer(n: int, ds: Dataset) -> None:
        if (n == 0) == first_has_issuer:
            ds.IssuerOfPatientID = "HOSP"

    paths = _first_two(corpus, tmp_path, issuer)
    with running_scp(tmp_path / "rb", mappings_dir=ROOT / "mappings") as scp:
        done = storescu(scp.port, paths)
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(scp.instances()) == 2 and scp.quarantined() == []


def test_status_counts_unscheduled_and_scheduled_studies(tmp_path: Path, corpus: Path) -> None:
    from engine.cli.queries import study_counts

    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        assert storescu(scp.port, _study(corpus)[:1]).returncode == 0
        assert scp.db.read(study_counts) == {"scheduled": 0, "unscheduled": 1}
        _order_for_corpus(scp)
        late_jobs(scp.db, scp.config)[0].run()
        assert scp.db.read(study_counts) == {"scheduled": 1, "unscheduled": 0}


def test_a_deflated_image_is_coerced_whole(tmp_path: Path, corpus: Path) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from tests.dicom.store_peer import raw_sender, send_raw

    src = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    src.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = tmp_path / "deflated.dcm"
    src.save_as(deflated, enforce_file_format=True)
    with running_scp(tmp_path / "scp", mappings_dir=ROOT / "mappings") as scp:
        handler = OrdersHandler(order_policy(scp.config))
        apply_records(scp.db, handler, [patient("P7", patient_name="ÅSTRÖM^JÖNS"),
                                        order("PL7", patient_id="P7", study_instance_uid=str(src.StudyInstanceUID))])
        with raw_sender(scp.port, [(str(src.SOPClassUID), DeflatedExplicitVRLittleEndian)]) as assoc:
            assert send_raw(assoc, deflated) == 0
        stored = dcmread(scp.stored_path(str(src.SOPInstanceUID)))
        assert stored.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
        assert (str(stored.PatientName), stored.PatientID) == ("ÅSTRÖM^JÖNS", "P7")
        assert str(stored.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID) == src.PatientID
        assert stored.PixelData == src.PixelData


def test_an_accession_alone_of_another_patient_does_not_link_the_study(tmp_path: Path, corpus: Path) -> None:
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        handler = OrdersHandler(order_policy(scp.config))
        apply_records(scp.db, handler, [patient("SOMEONE"), order("PL1", patient_id="SOMEONE",
                                                                  accession_number="MOF5026")])
        files = _study(corpus)
        assert storescu(scp.port, files).returncode == 0
        row = _study_row(scp)
        assert (row.order_pk, row.patient_name) == (None, "DOE^J1")  # type: ignore[attr-defined]
        assert all(str(dcmread(scp.archive / r.path).PatientName) == "DOE^J1" for r in scp.instances())
