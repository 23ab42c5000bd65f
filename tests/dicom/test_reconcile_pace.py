"""A correction yields to receive traffic (#13): bounded index transactions, pauses between them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from engine.archive.location import ArchiveLocation
from engine.archive.rewriting import RewriteIO
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.instance_tables import instances
from engine.domain.late_reconcile import Pace, reconcile_job
from engine.domain.reconciler import Reconciler
from engine.errors import ConfigError
from engine.plan import check_directory
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import running_scp, storescu
from tests.domain.factories import apply_records, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]
ADT = "MSH|^~\\&|HIS|HOSP|RADBRIDGE|HOSP|20261205080000||ADT^A08|A08|P|2.5.1\rPID|1||X^^^HOSP^MR||X\r"
COUNT = 5


def _study(corpus: Path, out: Path) -> list[Path]:
    """COUNT instances of one series: one corpus image under new SOP Instance UIDs."""
    src = sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[0]
    files = []
    for n in range(COUNT):
        ds = dcmread(src)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files.append(out / f"{n}.dcm")
        ds.save_as(files[-1])
    return files


def test_a_correction_commits_in_batches_and_pauses_between_them(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "src").mkdir()
    with running_scp(tmp_path, mappings_dir=ROOT / "mappings") as scp:
        apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
            patient("583295", patient_name="DOE^JOHN"),
            order("PL1", patient_id="583295", accession_number="MOF5026", modality="MR")])
        assert storescu(scp.port, _study(corpus, tmp_path / "src")).returncode == 0
        apply_records(scp.db, PatientsHandler(patient_policy(scp.config)),
                      [patient("583295", patient_name="DOE^JONATHAN", event="A08")], ADT)

        def indexed() -> int:
            return int(scp.db.read(lambda c: c.execute(
                select(func.count()).select_from(instances).where(instances.c.versions == 2)).scalar_one()))

        pauses: list[tuple[float, int]] = []  # (seconds, instances indexed when the job paused)
        job = reconcile_job(scp.db, RewriteIO.local(ArchiveLocation("primary", scp.config.archive_dir())),
                            Reconciler.from_config(scp.db, scp.config), 1.0,
                            pace=Pace(batch=2, yield_ratio=0.5, sleep=lambda s: pauses.append((s, indexed()))))
        assert job.run() == COUNT
        assert [n for _, n in pauses] == [2, 4]  # each batch committed before the pause, none after the last
        assert all(seconds > 0 for seconds, _ in pauses)
        assert indexed() == COUNT
        for r in scp.instances():
            assert str(dcmread(scp.archive / r.path, stop_before_pixels=True).PatientName) == "DOE^JONATHAN"


def test_a_pace_needs_a_positive_batch_and_a_non_negative_ratio() -> None:
    with pytest.raises(ValueError, match="batch >= 1"):
        Pace(batch=0)
    with pytest.raises(ValueError, match="batch >= 1"):
        Pace(yield_ratio=-1.0)


def test_engine_yaml_refuses_an_empty_correction_batch(tmp_path: Path) -> None:
    (tmp_path / "channels").mkdir()
    (tmp_path / "engine.yaml").write_text(f"mappings_dir: {ROOT / 'mappings'}\n"
                                          "reconcile: {correction_batch: 0, correction_yield_ratio: -1}\n")
    with pytest.raises(ConfigError) as exc:
        check_directory(tmp_path, {})
    text = "\n".join(exc.value.problems)
    assert "reconcile.correction_batch" in text and "reconcile.correction_yield_ratio" in text
