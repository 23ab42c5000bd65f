"""PIR: an order update (XO) reaches the stored images; corrected images are queued again per destination."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import select

from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.late_reconcile import late_jobs
from engine.domain.reconcile_tables import reconcile_requests
from engine.domain.routing import INSTANCE_REF_MEDIA_TYPE, InstanceRef
from engine.hl7.er7 import Message
from engine.store.schema import outbox
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import StoreSCP, running_scp, storescu
from tests.domain.factories import apply_records, merge, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]
ADT = "MSH|^~\\&|HIS|HOSP|RADBRIDGE|HOSP|20261205080000||ADT^{event}|A{event}|P|2.5.1\rPID|1||X^^^HOSP^MR||X\r"
ORM = "MSH|^~\\&|RIS|HOSP|RADBRIDGE|HOSP|20261205080000||ORM^O01|O{n}|P|2.5.1\rPID|1||X^^^HOSP^MR||X\r"


def _files(corpus: Path) -> list[Path]:
    return sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[:2]


def _orders(scp: StoreSCP, records: list[dict[str, Any]], n: int = 1) -> None:
    apply_records(scp.db, OrdersHandler(order_policy(scp.config)), records, ORM.format(n=n))


def _adt(scp: StoreSCP, event: str, records: list[dict[str, Any]]) -> None:
    apply_records(scp.db, PatientsHandler(patient_policy(scp.config)), records, ADT.format(event=event))


def _headers(scp: StoreSCP) -> list[Any]:
    return [dcmread(scp.archive / r.path, stop_before_pixels=True) for r in scp.instances()]


def _run_job(scp: StoreSCP) -> int:
    (job,) = late_jobs(scp.db, scp.config)
    return job.run()


def _requests(scp: StoreSCP) -> int:
    return len(scp.db.read(lambda c: c.execute(select(reconcile_requests)).all()))


def _outbox(scp: StoreSCP) -> list[Any]:
    return scp.db.read(lambda c: c.execute(select(outbox).order_by(outbox.c.id)).all())


def _mr_order(**fields: Any) -> dict[str, Any]:
    return order("PL1", patient_id="583295", accession_number="MOF5026", modality="MR", **fields)


def _stored_study(scp: StoreSCP, corpus: Path) -> None:
    """Order for 583295, then two MR images coerced to it on C-STORE."""
    _orders(scp, [patient("583295", patient_name="DOE^JOHN"), _mr_order()])
    assert storescu(scp.port, _files(corpus)).returncode == 0
    assert all(ds.StudyDescription == "CT HEAD" for ds in _headers(scp))


def test_an_xo_that_changes_coerced_values_corrects_the_stored_images(tmp_path: Path, corpus: Path) -> None:
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        _stored_study(scp, corpus)
        code = {"code_value": "MRBR", "coding_scheme_designator": "L", "code_meaning": "MR brain"}
        _orders(scp, [_mr_order(order_control="XO", requested_procedure_description="MR BRAIN",
                                requested_procedure_code=code, referring_physician_name="WHO^DOCTOR")], n=2)
        assert _requests(scp) == 1  # recorded with the XO, handled in the background
        assert all(ds.StudyDescription == "CT HEAD" for ds in _headers(scp))
        assert _run_job(scp) == 2
        for ds in _headers(scp):
            assert (ds.StudyDescription, str(ds.ReferringPhysicianName)) == ("MR BRAIN", "WHO^DOCTOR")
            assert ds.ProcedureCodeSequence[0].CodeValue == "MRBR"
            assert ds.RequestAttributesSequence[0].RequestedProcedureDescription == "MR BRAIN"
            reasons = [i.ReasonForTheAttributeModification for i in ds.OriginalAttributesSequence]
            assert reasons == ["COERCE", "CORRECT"]
            assert ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].StudyDescription == "CT HEAD"
        assert _requests(scp) == 0
        # the same XO again changes nothing (the channel sees a resend); the job would rewrite nothing either
        _orders(scp, [_mr_order(order_control="XO", requested_procedure_description="MR BRAIN",
                                requested_procedure_code=code, referring_physician_name="WHO^DOCTOR")], n=3)
        assert _run_job(scp) == 0
        assert all(len(ds.OriginalAttributesSequence) == 2 for ds in _headers(scp))


def test_a_status_update_of_a_stored_study_asks_for_no_correction(tmp_path: Path, corpus: Path) -> None:
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        _stored_study(scp, corpus)
        _orders(scp, [_mr_order(order_control="SC", order_status="CM")], n=2)
        assert _requests(scp) == 0


def _with_destinations(tmp_path: Path, pacs_policy: dict[str, Any]) -> Any:
    mllp = {"type": "mllp", "name": "pacs-adt", "host": "127.0.0.1", "port": 2999}
    pacs = {"type": "dicom", "name": "pacs", "host": "127.0.0.1", "port": 104, "called_ae_title": "PACS"}
    ai = {"type": "dicom", "name": "ai", "host": "127.0.0.1", "port": 105, "called_ae_title": "AI",
          "routes": [{"modalities": ["CT"]}]}
    return running_scp(tmp_path, mappings_dir=ROOT / "mappings", destinations=[mllp, pacs | pacs_policy, ai])


def _new_rows(scp: StoreSCP, before: int) -> list[Any]:
    return _outbox(scp)[before:]


def test_resend_queues_each_corrected_instance_once_for_the_destinations_it_was_routed_to(
        tmp_path: Path, corpus: Path) -> None:
    with _with_destinations(tmp_path, {}) as scp:  # on_correction: resend is the default
        _stored_study(scp, corpus)
        before = len(_outbox(scp))
        assert [r.destination for r in _outbox(scp)] == ["pacs", "pacs"]  # MR: not for the CT-only "ai"
        _adt(scp, "A08", [patient("583295", patient_name="DOE^JONATHAN", event="A08")])
        assert _run_job(scp) == 2
        rows = _new_rows(scp, before)
        assert [(r.destination, r.media_type) for r in rows] == [("pacs", INSTANCE_REF_MEDIA_TYPE)] * 2
        current = {r.id: r.versions for r in scp.instances()}
        refs = [InstanceRef.decode(r.payload) for r in rows]
        assert {ref.instance_pk: ref.version for ref in refs} == current
        assert all(v == 2 for v in current.values())
        assert {r.ordering_key for r in rows} == {str(_headers(scp)[0].StudyInstanceUID)}
        _adt(scp, "A08", [patient("583295", patient_name="DOE^JONATHAN", event="A08")])  # nothing new
        assert _run_job(scp) == 0
        assert len(_outbox(scp)) == before + 2


def test_hl7_sends_one_a08_instead_of_the_images(tmp_path: Path, corpus: Path) -> None:
    with _with_destinations(tmp_path, {"on_correction": "hl7", "correction_hl7_destination": "pacs-adt"}) as scp:
        _stored_study(scp, corpus)
        before = len(_outbox(scp))
        _adt(scp, "A08", [patient("583295", patient_name="DOE^JONATHAN", birth_date="19600606", event="A08")])
        assert _run_job(scp) == 2
        (row,) = _new_rows(scp, before)
        assert (row.destination, row.media_type, row.ordering_key) == ("pacs-adt", "application/hl7-v2", "583295")
        msg = Message(row.payload.decode("utf-8"))
        assert msg.message_code == "ADT"
        text = row.payload.decode()
        assert "|ADT^A08^ADT_A01|" in text
        assert "PID|1||583295^^^HOSP||DOE^JONATHAN||19600606|F" in text
        assert "MRG|" not in text


def test_hl7_sends_an_a40_naming_the_old_identifier_after_a_merge(tmp_path: Path, corpus: Path) -> None:
    with _with_destinations(tmp_path, {"on_correction": "hl7", "correction_hl7_destination": "pacs-adt"}) as scp:
        _stored_study(scp, corpus)
        before = len(_outbox(scp))
        _adt(scp, "A40", [patient("REAL7", patient_name="REAL^PERSON", birth_date="19500505", sex="M"),
                          merge("REAL7", "583295")])
        assert _run_job(scp) == 2
        (row,) = _new_rows(scp, before)
        segments = row.payload.decode().split("\r")
        assert "|ADT^A40^ADT_A39|" in segments[0]
        assert segments[2] == "PID|1||REAL7^^^HOSP||REAL^PERSON||19500505|M"
        assert segments[3] == "MRG|583295^^^HOSP"


def test_hl7_sends_nothing_for_an_order_update_and_none_sends_nothing_at_all(tmp_path: Path, corpus: Path) -> None:
    with _with_destinations(tmp_path, {"on_correction": "hl7", "correction_hl7_destination": "pacs-adt"}) as scp:
        _stored_study(scp, corpus)
        before = len(_outbox(scp))
        _orders(scp, [_mr_order(order_control="XO", requested_procedure_description="MR BRAIN")], n=2)
        assert _run_job(scp) == 2
        assert _new_rows(scp, before) == []
    with _with_destinations(tmp_path / "none", {"on_correction": "none"}) as scp:
        _stored_study(scp, corpus)
        before = len(_outbox(scp))
        _adt(scp, "A08", [patient("583295", patient_name="DOE^JONATHAN", event="A08")])
        assert _run_job(scp) == 2
        assert _new_rows(scp, before) == []
