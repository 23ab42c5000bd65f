"""C-STORE into a primary location in a real S3 store (SeaweedFS): success only after the PUT returned.

pynetdicom is the modality; the spool stays local (``archive.primary``).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from engine.archive.archive import archive_from_config, copy_current, current_instance
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.late_reconcile import late_jobs
from tests.archive.replica_peer import copies, ct, replicate_until_sent, send
from tests.archive.seaweed import Seaweed, running_seaweed
from tests.dicom.store_peer import dataset_bytes, running_scp, store_one
from tests.domain.factories import apply_records, order, patient


@pytest.fixture
def seaweed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seaweed]:
    with running_seaweed(tmp_path / "seaweed") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        server.client().create_bucket(Bucket="radbridge")  # type: ignore[attr-defined]
        yield server


def _keys(seaweed: Seaweed, prefix: str) -> list[str]:
    listing = seaweed.client().list_objects_v2(Bucket="radbridge", Prefix=prefix)  # type: ignore[attr-defined]
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _settings(seaweed: Seaweed, tmp_path: Path, **extra: object) -> dict[str, object]:
    return {"primary": str(tmp_path / "spool"), "primary_s3": "s3://radbridge/pacs",
            "s3": {"endpoint_url": seaweed.endpoint}, **extra}


def test_a_stored_instance_is_an_object_in_the_store_and_nothing_stays_local(
        tmp_path: Path, corpus: Path, seaweed: Seaweed) -> None:
    with running_scp(tmp_path, archive=_settings(seaweed, tmp_path)) as scp:
        ds = ct(corpus, generate_uid())
        assert send(scp.port, [ds, ds]) == [0, 0]  # the resend changes nothing
        (row,) = scp.instances()
        assert _keys(seaweed, "pacs/") == [f"pacs/{row.path}"]
        body = seaweed.client().get_object(Bucket="radbridge", Key=f"pacs/{row.path}")["Body"].read()  # type: ignore
        local = tmp_path / "body.dcm"
        local.write_bytes(body)
        assert hashlib.sha256(dataset_bytes(local)).hexdigest() == row.sha256 and len(dataset_bytes(local)) == row.size
        assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []
        inst = scp.db.read(lambda c: current_instance(c, row.sop_instance_uid))
        out = io.BytesIO()
        assert copy_current(archive_from_config(scp.config), inst, out) == "primary"  # type: ignore[arg-type]
        assert out.getvalue() == body


def test_a_store_that_is_down_answers_out_of_resources_and_keeps_nothing(
        tmp_path: Path, corpus: Path, seaweed: Seaweed) -> None:
    with running_scp(tmp_path, archive=_settings(seaweed, tmp_path)) as scp:
        seaweed.kill()
        assert send(scp.port, [ct(corpus, generate_uid())]) == [0xA700]
        assert scp.instances() == []
        assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []
        seaweed.start()
        assert send(scp.port, [ct(corpus, generate_uid())]) == [0]
        (row,) = scp.instances()
        assert _keys(seaweed, "pacs/") == [f"pacs/{row.path}"]


def test_an_s3_primary_replicates_to_a_directory_secondary(tmp_path: Path, corpus: Path, seaweed: Seaweed) -> None:
    second = tmp_path / "second"
    settings = _settings(seaweed, tmp_path, secondary=str(second),
                         replication_retry={"initial_seconds": 0.01, "max_seconds": 0.01})
    with running_scp(tmp_path, archive=settings) as scp:
        assert send(scp.port, [ct(corpus, generate_uid()) for _ in range(2)]) == [0, 0]
        replicate_until_sent(scp, archive_from_config(scp.config))
        for row in scp.instances():
            body = seaweed.client().get_object(Bucket="radbridge", Key=f"pacs/{row.path}")["Body"].read()  # type: ignore
            assert (second / row.path).read_bytes() == body
            assert copies(scp)[row.id].secondary_state == "VERIFIED"


def test_a_correction_of_a_study_in_an_s3_primary_reads_and_writes_objects(
        tmp_path: Path, corpus: Path, seaweed: Seaweed) -> None:
    """PIR (#13) on an object-store primary: the stored object is read (checked), the corrected version is
    a new object beside it, and nothing is left in the local spool."""
    mappings = Path(__file__).resolve().parents[2] / "mappings"
    with running_scp(tmp_path, mappings_dir=mappings, archive=_settings(seaweed, tmp_path)) as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("583295", patient_name="DOE^JOHN"),
            order("PL1", patient_id="583295", accession_number="MOF5026", modality="MR")])
        ds = dcmread(sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[0])
        assert send_any(scp.port, ds) == 0
        (before,) = scp.instances()
        adt = "MSH|^~\\&|HIS|HOSP|RADBRIDGE|HOSP|20261205080000||ADT^A08|A08|P|2.5.1\rPID|1||X^^^HOSP^MR||X\r"
        apply_records(scp.db, PatientsHandler(patient_policy(scp.config)),
                      [patient("583295", patient_name="DOE^JONATHAN", event="A08")], adt)
        (job,) = late_jobs(scp.db, scp.config)
        assert job.run() == 1
        (after,) = scp.instances()
        assert after.versions == 2 and after.path != before.path
        assert _keys(seaweed, "pacs/") == sorted([f"pacs/{before.path}", f"pacs/{after.path}"])
        body = seaweed.client().get_object(Bucket="radbridge", Key=f"pacs/{after.path}")["Body"].read()  # type: ignore
        local = tmp_path / "corrected.dcm"
        local.write_bytes(body)
        corrected = dcmread(local)
        assert str(corrected.PatientName) == "DOE^JONATHAN"
        assert corrected.OriginalAttributesSequence[-1].ReasonForTheAttributeModification == "CORRECT"
        assert corrected.PixelData == ds.PixelData
        assert hashlib.sha256(dataset_bytes(local)).hexdigest() == after.sha256
        assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []


def send_any(port: int, ds: Dataset) -> int:
    """C-STORE one dataset of whatever SOP class and transfer syntax it has."""
    return store_one(port, ds, aet="MR1")


def test_an_image_refused_after_its_put_is_kept_in_quarantine_and_its_object_removed(
        tmp_path: Path, corpus: Path, seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image refused by the index's own series check (a concurrent store filed its series under another
    study after the check before storing: made here by that check seeing nothing) is refused after its file
    was placed; with an S3 primary the placed file is an object, not a local file. Before, opening its key
    as a local path failed: nothing reached quarantine (0xC240 answered, the log said it could not be kept)
    and the object stayed in the store, named by no index row."""
    import engine.domain.reconciler

    monkeypatch.setattr(engine.domain.reconciler, "series_filed_elsewhere", lambda *args: None)
    first = ct(corpus, generate_uid())
    other = ct(corpus, generate_uid())
    other.SeriesInstanceUID = first.SeriesInstanceUID  # the same series under another study
    with running_scp(tmp_path, archive=_settings(seaweed, tmp_path)) as scp:
        assert send(scp.port, [first, other]) == [0, 0xC240]
        (row,) = scp.instances()
        assert _keys(seaweed, "pacs/") == [f"pacs/{row.path}"]
        (kept,) = scp.quarantined()
        assert kept.status == 0xC240 and kept.sop_instance_uid == other.SOPInstanceUID
        held = dcmread(scp.config.quarantine_dir() / kept.path)
        assert held.SOPInstanceUID == other.SOPInstanceUID and held.StudyInstanceUID == other.StudyInstanceUID
