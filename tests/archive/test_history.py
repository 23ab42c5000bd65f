"""Fixity of the archive's history (#13): old versions are checked in both locations, reported by number,
and rebuilt from the other location (in process, real directories, pynetdicom as the modality)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from engine.archive.fixity import verify
from engine.archive.history import restore_history, verify_history
from engine.domain.instance_tables import instance_versions
from tests.archive.replica_peer import ct, replicate_until_sent, scp_with_secondary, send
from tests.dicom.store_peer import StoreSCP


def _replaced(corpus: Path, study: str) -> tuple[Dataset, Dataset]:
    """An instance and the same SOP Instance UID with other content (a resend that replaces it)."""
    first = ct(corpus, study)
    changed = ct(corpus, study)
    changed.SOPInstanceUID = changed.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    changed.SeriesInstanceUID = first.SeriesInstanceUID
    changed.StudyDescription = "resent with other content"
    return first, changed


def _versions(scp: StoreSCP) -> list[Any]:
    return scp.db.read(lambda c: c.execute(select(instance_versions).order_by(instance_versions.c.id)).all())


def test_old_versions_are_verified_in_both_locations_and_restored_from_the_other(
        tmp_path: Path, corpus: Path) -> None:
    second = tmp_path / "second"
    with scp_with_secondary(tmp_path, str(second)) as (scp, archive):
        study = generate_uid()
        a, b = _replaced(corpus, study), _replaced(corpus, study)
        assert send(scp.port, [a[0], a[1], b[0], b[1]]) == [0] * 4
        replicate_until_sent(scp, archive)
        old_a, old_b = _versions(scp)
        assert {(v.primary_state, v.secondary_state) for v in (old_a, old_b)} == {("PRESENT", "VERIFIED")}
        assert verify_history(archive, scp.db) == (2, [])
        original = (second / old_a.path).read_bytes()
        damaged = bytearray(original)
        damaged[-50] ^= 0x01
        (second / old_a.path).write_bytes(bytes(damaged))
        (scp.archive / old_b.path).unlink()
        checked, findings = verify_history(archive, scp.db)
        assert checked == 2
        assert {(f.sop_instance_uid, f.location, f.problem, f.version, f.replaced) for f in findings} == {
            (a[0].SOPInstanceUID, "secondary", "DAMAGED", 1, True),
            (b[0].SOPInstanceUID, "primary", "MISSING", 1, True)}
        assert verify(archive, scp.db)[1] == []  # the current versions are fine
        assert {(v.primary_state, v.secondary_state) for v in _versions(scp)} == {
            ("PRESENT", "DAMAGED"), ("MISSING", "VERIFIED")}
        repairs = restore_history(archive, scp.db)
        assert {(r.sop_instance_uid, r.location, r.source, r.ok, r.version) for r in repairs} == {
            (a[0].SOPInstanceUID, "secondary", "primary", True, 1),
            (b[0].SOPInstanceUID, "primary", "secondary", True, 1)}
        assert (second / old_a.path).read_bytes() == original
        assert (scp.archive / old_b.path).read_bytes() == (second / old_b.path).read_bytes()
        assert verify_history(archive, scp.db) == (2, [])
        assert {(v.primary_state, v.secondary_state) for v in _versions(scp)} == {("PRESENT", "VERIFIED")}


def test_the_sample_checks_the_least_recently_checked_old_versions_first(tmp_path: Path, corpus: Path) -> None:
    with scp_with_secondary(tmp_path, str(tmp_path / "second")) as (scp, archive):
        study = generate_uid()
        pairs = [_replaced(corpus, study) for _ in range(3)]
        assert send(scp.port, [ds for pair in pairs for ds in pair]) == [0] * 6
        replicate_until_sent(scp, archive)
        seen: list[str] = []
        for _ in range(3):
            assert verify_history(archive, scp.db, sample=1)[0] == 1
            checked = [v for v in _versions(scp) if v.checked_at is not None]
            seen.append(max(checked, key=lambda v: v.checked_at).path)
        assert len(set(seen)) == 3
