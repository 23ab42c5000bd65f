"""The same SOP Instance UID sent again: same content changes nothing; new content follows the policy."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import select

from engine.domain.instance_tables import instance_versions
from tests.dicom.store_peer import StoreSCP, running_scp


def _send(port: int, *datasets: Dataset, aet: str = "CT1") -> list[int]:
    ae = AE(ae_title=aet)
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _files(scp: StoreSCP) -> list[Path]:
    return sorted(p for p in scp.archive.rglob("*.dcm") if ".quarantine" not in p.parts)


def _ct(corpus: Path) -> Dataset:
    return dcmread(corpus / "dicom" / "single" / "CT_small.dcm")


def test_same_instance_sent_again_with_the_same_content_changes_nothing(tmp_path: Path, corpus: Path) -> None:
    ds = _ct(corpus)
    with running_scp(tmp_path) as scp:
        assert _send(scp.port, ds) == [0x0000]
        first = scp.instances()
        files = _files(scp)
        assert _send(scp.port, ds, ds, aet="OTHER") == [0x0000, 0x0000]
        assert scp.instances() == first  # same row, same received time and AE: nothing changed
        assert _files(scp) == files
        assert not list((scp.archive / ".incoming").iterdir())


def test_new_content_replaces_and_keeps_the_old_version(tmp_path: Path, corpus: Path) -> None:
    ds = _ct(corpus)
    with running_scp(tmp_path) as scp:
        assert _send(scp.port, ds) == [0x0000]
        (old,) = scp.instances()
        ds.StudyDescription = "CORRECTED"
        assert _send(scp.port, ds) == [0x0000]
        (new,) = scp.instances()
        assert (new.id, new.versions) == (old.id, 2)
        assert new.sha256 != old.sha256 and new.path != old.path
        assert dcmread(scp.archive / new.path).StudyDescription == "CORRECTED"
        (kept,) = scp.db.read(lambda c: c.execute(select(instance_versions)).all())
        assert (kept.instance_pk, kept.sha256, kept.path) == (old.id, old.sha256, old.path)
        assert (scp.archive / kept.path).is_file()  # the old version's file stays


def test_new_content_is_refused_under_the_reject_policy(tmp_path: Path, corpus: Path) -> None:
    ds = _ct(corpus)
    with running_scp(tmp_path, archive={"duplicate_policy": "reject"}) as scp:
        assert _send(scp.port, ds) == [0x0000]
        before, files = scp.instances(), _files(scp)
        ds.StudyDescription = "CORRECTED"
        assert _send(scp.port, ds) == [0x0111]
        assert scp.instances() == before
        assert _files(scp) == files


def test_spool_files_an_aborted_transfer_left_are_swept(tmp_path: Path, corpus: Path) -> None:
    with running_scp(tmp_path) as scp:
        abandoned = scp.archive / ".incoming" / "rx-aborted.dcm"
        abandoned.write_bytes(b"\0" * 132)
        os.utime(abandoned, (1000.0, 1000.0))
        assert _send(scp.port, _ct(corpus)) == [0x0000]
        assert not abandoned.exists()


def test_new_content_under_another_study_and_series_moves_the_instance_and_its_counts(tmp_path: Path,
                                                                                      corpus: Path) -> None:
    """A modality resends an image with a corrected Study and Series Instance UID (same SOP Instance UID): the
    instance moved to the new study, but the study and series it left kept counting it (a series count only
    grew, for the images an MPPS announced), so `studies list` showed the old study with an image it no longer
    has. A series no MPPS announced now counts its stored instances when one leaves it."""
    from engine.domain.tables import series, studies

    ds = _ct(corpus)
    old_study, old_series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    with running_scp(tmp_path) as scp:
        assert _send(scp.port, ds) == [0x0000]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.1.1"
        assert _send(scp.port, ds) == [0x0000]
        (row,) = scp.instances()
        assert row.versions == 2
        counts = dict(scp.db.read(lambda c: c.execute(
            select(studies.c.study_instance_uid, studies.c.number_of_instances)).all()))
        assert counts == {old_study: 0, "1.2.826.0.1.3680043.10.1": 1}
        left = scp.db.read(lambda c: c.execute(select(series.c.number_of_instances).where(
            series.c.series_instance_uid == old_series)).scalar_one())
        assert left == 0
