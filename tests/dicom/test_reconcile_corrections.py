"""PIR: ADT A08 and A40 reach the stored images (reason CORRECT), in the background, idempotently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import select

from engine.cli.studies import link_to_accession
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.late_reconcile import late_jobs
from engine.domain.reconcile_tables import reconcile_requests
from engine.domain.tables import studies
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import StoreSCP, running_scp, storescu
from tests.domain.factories import apply_records, context, merge, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]
ADT = "MSH|^~\\&|HIS|HOSP|RADBRIDGE|HOSP|20261205080000||ADT^{event}|A{event}|P|2.5.1\rPID|1||X^^^HOSP^MR||X\r"


def _files(corpus: Path) -> list[Path]:
    return sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[:2]


def _adt(scp: StoreSCP, event: str, records: list[dict[str, Any]]) -> None:
    apply_records(scp.db, PatientsHandler(patient_policy(scp.config)), records, ADT.format(event=event))


def _headers(scp: StoreSCP) -> list[Any]:
    return [dcmread(scp.archive / r.path, stop_before_pixels=True) for r in scp.instances()]


def _run_job(scp: StoreSCP) -> int:
    (job,) = late_jobs(scp.db, scp.config)
    return job.run()


def test_an_a08_corrects_the_stored_images_of_the_patient(tmp_path: Path, corpus: Path) -> None:
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("583295", patient_name="DOE^JOHN"),
            order("PL1", patient_id="583295", accession_number="MOF5026", modality="MR")])
        files = _files(corpus)
        assert storescu(scp.port, files).returncode == 0
        pixels = {r.sop_instance_uid: dcmread(scp.archive / r.path).PixelData for r in scp.instances()}
        _adt(scp, "A08", [patient("583295", patient_name="DOE^JONATHAN", event="A08")])
        assert len(scp.db.read(lambda c: c.execute(select(reconcile_requests)).all())) == 1
        assert _run_job(scp) == len(files)
        for ds in _headers(scp):
            assert str(ds.PatientName) == "DOE^JONATHAN"
            first, second = ds.OriginalAttributesSequence
            assert (first.ReasonForTheAttributeModification, second.ReasonForTheAttributeModification) == (
                "COERCE", "CORRECT")
            assert str(first.ModifiedAttributesSequence[0].PatientName) == "DOE^J1"
            assert str(second.ModifiedAttributesSequence[0].PatientName) == "DOE^JOHN"
        for r in scp.instances():
            assert dcmread(scp.archive / r.path).PixelData == pixels[r.sop_instance_uid]
        assert scp.db.read(lambda c: c.execute(select(studies.c.patient_name)).scalar_one()) == "DOE^JONATHAN"
        _adt(scp, "A08", [patient("583295", patient_name="DOE^JONATHAN", event="A08")])  # nothing new
        assert _run_job(scp) == 0
        assert all(len(ds.OriginalAttributesSequence) == 2 for ds in _headers(scp))


def test_trauma_images_follow_an_a40_into_the_real_patient(tmp_path: Path, corpus: Path) -> None:
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("TRAUMA1", patient_name="UNKNOWN^TRAUMA"),
            order("PL1", patient_id="TRAUMA1", accession_number="MOF5026", modality="MR")])
        assert storescu(scp.port, _files(corpus)).returncode == 0
        # the images carry another id (583295): no match; the emergency desk links them, then the A40
        study_uid = str(dcmread(_files(corpus)[0], stop_before_pixels=True).StudyInstanceUID)
        link_to_accession(scp.db, scp.config, study_uid, "MOF5026")
        assert {ds.PatientID for ds in _headers(scp)} == {"TRAUMA1"}
        _adt(scp, "A40", [patient("REAL7", patient_name="REAL^PERSON", birth_date="19500505"),
                          merge("REAL7", "TRAUMA1")])
        assert _run_job(scp) == 2
        for ds in _headers(scp):
            assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate) == ("REAL7", "REAL^PERSON", "19500505")
            assert ds.OriginalAttributesSequence[-1].ReasonForTheAttributeModification == "CORRECT"
            assert ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].PatientID == "TRAUMA1"
        row = scp.db.read(lambda c: c.execute(select(studies)).one())
        assert (row.patient_id, row.order_pk is not None) == ("REAL7", True)


def test_an_unscheduled_study_of_a_known_patient_is_corrected_from_the_patient(tmp_path: Path,
                                                                                corpus: Path) -> None:
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        _adt(scp, "A04", [patient("583295", patient_name="DOE^J1", event="A04")])
        assert storescu(scp.port, _files(corpus)).returncode == 0
        assert scp.db.read(lambda c: c.execute(select(studies.c.order_pk)).scalar_one()) is None
        _adt(scp, "A31", [patient("583295", patient_name="DOE^JANE", sex="F", event="A31")])
        assert _run_job(scp) == 2
        for ds in _headers(scp):
            assert (str(ds.PatientName), ds.PatientSex, ds.AccessionNumber) == ("DOE^JANE", "F", "MOF5026")
            assert ds.OriginalAttributesSequence[-1].ReasonForTheAttributeModification == "CORRECT"
        assert scp.db.read(lambda c: c.execute(select(studies.c.order_pk)).scalar_one()) is None


def test_an_adt_that_queues_a_correction_says_so_on_the_message(tmp_path: Path, corpus: Path) -> None:
    """PIR campaign: the ACK is AA either way; `messages show` must say what the ADT asked of the images."""
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("583295", patient_name="DOE^JOHN"), patient("NOIMAGES"),
            order("PL1", patient_id="583295", accession_number="MOF5026", modality="MR")])
        assert storescu(scp.port, _files(corpus)).returncode == 0
        handler = PatientsHandler(patient_policy(scp.config))
        ctx = context([patient("583295", patient_name="DOE^JONATHAN", event="A08")], ADT.format(event="A08"))
        scp.db.writer.call(lambda conn: handler.apply(conn, ctx))
        notes = [o.note for o in ctx.outcomes if o.note]
        assert len(notes) == 1 and notes[0].startswith("A08: the stored images of 1 study(ies)")
        ctx = context([patient("NOIMAGES", event="A08")], ADT.format(event="A08"))
        scp.db.writer.call(lambda conn: handler.apply(conn, ctx))
        assert [o.note for o in ctx.outcomes] == [""]  # no stored images: nothing asked, nothing said
