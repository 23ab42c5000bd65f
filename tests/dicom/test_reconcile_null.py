"""PIR of an HL7 null: an A08 that deletes the birth date (PID-7 ``""``), or an XO that deletes the
study description, empties the stored images' value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import select

from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.late_reconcile import late_jobs
from engine.domain.tables import studies
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import StoreSCP, running_scp, storescu
from tests.domain.factories import apply_records, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]
ORM = "MSH|^~\\&|RIS|HOSP|RADBRIDGE|HOSP|20261205080000||ORM^O01|O{n}|P|2.5.1\rPID|1||X^^^HOSP^MR||X\r"
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


def test_a_null_birth_date_empties_the_images_and_records_the_old_one(tmp_path: Path, corpus: Path) -> None:
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("583295", patient_name="DOE^JOHN", birth_date="19700101"),
            order("PL1", patient_id="583295", accession_number="MOF5026", modality="MR")])
        assert storescu(scp.port, _files(corpus)).returncode == 0
        assert {ds.PatientBirthDate for ds in _headers(scp)} == {"19700101"}

        _adt(scp, "A08", [patient("583295", patient_name="DOE^JOHN", birth_date="", event="A08")])  # empty
        assert _run_job(scp) == 0
        _adt(scp, "A08", [patient("583295", patient_name="DOE^JOHN", birth_date="", event="A08",
                                  cleared=["birth_date"])])  # PID-7 ""
        assert _run_job(scp) == 2
        for ds in _headers(scp):
            assert "PatientBirthDate" in ds and ds.PatientBirthDate == ""
            last = ds.OriginalAttributesSequence[-1]
            assert last.ReasonForTheAttributeModification == "CORRECT"
            assert [e.keyword for e in last.ModifiedAttributesSequence[0]] == ["PatientBirthDate"]
            assert last.ModifiedAttributesSequence[0].PatientBirthDate == "19700101"


def test_an_unscheduled_study_follows_a_null_sex_from_the_patient(tmp_path: Path, corpus: Path) -> None:
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        _adt(scp, "A04", [patient("583295", patient_name="DOE^J1", sex="", event="A04")])
        assert storescu(scp.port, _files(corpus)).returncode == 0
        assert {ds.PatientSex for ds in _headers(scp)} == {"M"}  # the modality's: the patient has none stored
        _adt(scp, "A31", [patient("583295", patient_name="DOE^J1", sex="", event="A31", cleared=["sex"])])
        assert _run_job(scp) == 2
        assert {ds.PatientSex for ds in _headers(scp)} == {""}
        assert {ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].PatientSex
                for ds in _headers(scp)} == {"M"}



def test_an_xo_that_deletes_the_description_empties_it_in_the_images(tmp_path: Path, corpus: Path) -> None:
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        mr = {"patient_id": "583295", "accession_number": "MOF5026", "modality": "MR"}
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)),
                      [patient("583295", patient_name="DOE^JOHN"), order("PL1", **mr)], ORM.format(n=1))
        assert storescu(scp.port, _files(corpus)).returncode == 0
        assert {ds.StudyDescription for ds in _headers(scp)} == {"CT HEAD"}
        xo = order("PL1", order_control="XO", requested_procedure_description="",
                   cleared=["requested_procedure_description"], **mr)
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [xo], ORM.format(n=2))
        assert _run_job(scp) == 2
        for ds in _headers(scp):
            assert ds.StudyDescription == "" and ds.RequestAttributesSequence[0].RequestedProcedureDescription == ""
            last = ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
            assert last.StudyDescription == "CT HEAD"
        assert scp.db.read(lambda c: c.execute(select(studies.c.study_description)).scalar_one()) == ""
