"""PIR reads through the archive (#13): a tiered, damaged or lost primary copy is corrected from the verified
secondary copy; the corrected version goes to the primary, owes its secondary copy, and tiers again.

DCMTK storescu is the modality; the locations are real directories; the replication and tiering
rounds are the engine's own.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select

from engine.archive.archive import Archive, archive_from_config
from engine.archive.fixity import verify
from engine.archive.history import verify_history
from engine.archive.tiering import tier
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.instance_tables import instance_versions
from engine.domain.late_reconcile import late_jobs
from tests.archive.replica_peer import FAST_RETRY, copies, replicate_until_sent
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import StoreSCP, running_scp, storescu
from tests.domain.factories import apply_records, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]
ADT = "MSH|^~\\&|HIS|HOSP|RADBRIDGE|HOSP|20261205080000||ADT^A08|A08|P|2.5.1\rPID|1||X^^^HOSP^MR||X\r"


def _stored(scp: StoreSCP, corpus: Path) -> tuple[Archive, dict[str, bytes]]:
    """The corpus study stored under its order and copied to the secondary; (archive, pixel data by UID)."""
    apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
        patient("583295", patient_name="DOE^JOHN"),
        order("PL1", patient_id="583295", accession_number="MOF5026", modality="MR")])
    files = sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[:3]
    assert storescu(scp.port, files).returncode == 0
    archive = archive_from_config(scp.config)
    replicate_until_sent(scp, archive)
    assert {c.secondary_state for c in copies(scp).values()} == {"VERIFIED"}
    return archive, {r.sop_instance_uid: dcmread(scp.archive / r.path).PixelData for r in scp.instances()}


def _correct(scp: StoreSCP) -> int:
    apply_records(scp.db, PatientsHandler(patient_policy(scp.config)),
                  [patient("583295", patient_name="DOE^JONATHAN", event="A08")], ADT)
    (job,) = late_jobs(scp.db, scp.config)
    return job.run()


def _versions(scp: StoreSCP) -> list[Any]:
    return scp.db.read(lambda c: c.execute(select(instance_versions).order_by(instance_versions.c.id)).all())


def _check_corrected(scp: StoreSCP, pixels: dict[str, bytes], root: Path) -> None:
    for r in scp.instances():
        ds = dcmread(root / r.path)
        assert str(ds.PatientName) == "DOE^JONATHAN"
        assert ds.OriginalAttributesSequence[-1].ReasonForTheAttributeModification == "CORRECT"
        assert ds.PixelData == pixels[r.sop_instance_uid]  # the intact bytes, whatever the primary held


@pytest.fixture
def scp(tmp_path: Path) -> Any:
    archive = {"secondary": str(tmp_path / "second"), "replication_retry": FAST_RETRY}
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings", archive=archive) as scp:
        yield scp


def test_a_tiered_study_is_corrected_from_the_secondary_and_leaves_the_primary_again(
        scp: StoreSCP, corpus: Path) -> None:
    archive, pixels = _stored(scp, corpus)
    assert tier(archive, scp.db, timedelta(0)) == len(pixels)
    assert not any((scp.archive / r.path).exists() for r in scp.instances())
    assert _correct(scp) == len(pixels)
    _check_corrected(scp, pixels, scp.archive)  # the corrected version is written to the primary
    assert {(c.primary_state, c.secondary_state) for c in copies(scp).values()} == {("PRESENT", "PENDING")}
    assert {(v.primary_state, v.secondary_state) for v in _versions(scp)} == {("TIERED", "VERIFIED")}
    assert all((scp.archive.parent / "second" / v.path).is_file() for v in _versions(scp))
    replicate_until_sent(scp, archive)
    _check_corrected(scp, pixels, scp.archive.parent / "second")
    assert tier(archive, scp.db, timedelta(0)) == len(pixels)  # the next tiering run: out of the primary again
    assert not any((scp.archive / r.path).exists() for r in scp.instances())
    assert verify(archive, scp.db)[1] == [] and verify_history(archive, scp.db)[1] == []


def test_a_damaged_or_lost_primary_copy_is_corrected_from_the_verified_secondary_copy(
        scp: StoreSCP, corpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    _archive, pixels = _stored(scp, corpus)
    damaged, lost, _intact = scp.instances()
    data = bytearray((scp.archive / damaged.path).read_bytes())
    data[-100] ^= 0x01  # in the pixel data: the header still parses
    (scp.archive / damaged.path).write_bytes(bytes(data))
    (scp.archive / lost.path).unlink()
    assert _correct(scp) == len(pixels)
    _check_corrected(scp, pixels, scp.archive)
    rows = {r.sop_instance_uid: r for r in scp.instances()}
    for r in rows.values():
        body = (scp.archive / r.path).read_bytes()
        assert hashlib.sha256(body[len(body) - r.size:]).hexdigest() == r.sha256
    unusable = [m for m in caplog.messages if "is unusable" in m]  # the lost one is simply not there
    assert len(unusable) == 1 and damaged.sop_instance_uid in unusable[0] and "checksums" in unusable[0]
    assert list((scp.archive / ".incoming").iterdir()) == []  # no scratch copy or staged file left


def test_no_intact_copy_anywhere_leaves_that_image_as_stored_and_corrects_the_others(
        scp: StoreSCP, corpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    _archive, pixels = _stored(scp, corpus)
    gone = scp.instances()[0]
    (scp.archive / gone.path).unlink()
    (scp.archive.parent / "second" / gone.path).unlink()
    assert _correct(scp) == len(pixels) - 1
    assert any(f"instance {gone.sop_instance_uid} left as stored" in m for m in caplog.messages)
    assert [r.versions for r in scp.instances()] == [1, 2, 2]
