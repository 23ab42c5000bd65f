"""Archive consistency: tiering survives a crash between its steps, old versions reach the secondary
(in process, real locations)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from engine.archive.fixity import verify
from engine.archive.fs_location import FileLocation
from engine.archive.objects import fixity
from engine.archive.service import drop_copies_owed_to_a_removed_secondary
from engine.archive.tiering import tier
from engine.domain.instance_tables import instance_versions
from tests.archive.replica_peer import copies, copy_rows, ct, replicate_until_sent, scp_with_secondary, send


class _Crash(BaseException):
    """The process dying at this point (nothing after it runs)."""


class _CrashingPrimary(FileLocation):
    def delete(self, key: str) -> None:
        raise _Crash


def test_a_crash_between_marking_and_removing_leaves_no_orphan_primary_file(tmp_path: Path, corpus: Path) -> None:
    with scp_with_secondary(tmp_path, str(tmp_path / "second")) as (scp, archive):
        assert send(scp.port, [ct(corpus, generate_uid())]) == [0]
        replicate_until_sent(scp, archive)
        (inst,) = scp.instances()
        crashing = replace(archive, primary=_CrashingPrimary("primary", scp.archive))
        with pytest.raises(_Crash):
            tier(crashing, scp.db, timedelta(0))
        assert (scp.archive / inst.path).exists()
        assert copies(scp)[inst.id].primary_state == "TIERING"
        assert verify(archive, scp.db)[1] == []  # a primary on its way out is not reported lost
        tier(archive, scp.db, timedelta(0))  # the next run (after the restart) completes the removal
        assert not (scp.archive / inst.path).exists()
        assert copies(scp)[inst.id].primary_state == "TIERED"
        assert verify(archive, scp.db)[1] == []



def test_a_version_replaced_before_its_copy_was_made_still_reaches_the_secondary(
        tmp_path: Path, corpus: Path) -> None:
    """History (``instance_versions``) kept on the primary only would be a disaster-recovery gap."""
    second = tmp_path / "second"
    with scp_with_secondary(tmp_path, str(second)) as (scp, archive):
        first = ct(corpus, generate_uid())
        changed = ct(corpus, first.StudyInstanceUID)
        changed.SOPInstanceUID = changed.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
        changed.SeriesInstanceUID = first.SeriesInstanceUID
        changed.StudyDescription = "resent with other content"
        assert send(scp.port, [first, changed]) == [0, 0]  # replace: the first becomes an old version
        replicate_until_sent(scp, archive)
        old_path, old_sha = scp.db.read(lambda c: c.execute(
            select(instance_versions.c.path, instance_versions.c.sha256)).one())
        (current,) = scp.instances()
        assert (second / old_path).read_bytes() == (scp.archive / old_path).read_bytes()
        assert fixity(archive.secondary, old_path).sha256 == old_sha
        assert (second / current.path).read_bytes() == (scp.archive / current.path).read_bytes()


def test_copies_owed_to_a_secondary_that_was_removed_end_as_dead_letters_saying_why(
        tmp_path: Path, corpus: Path) -> None:
    with scp_with_secondary(tmp_path, str(tmp_path / "second")) as (scp, _archive):
        assert send(scp.port, [ct(corpus, generate_uid()) for _ in range(2)]) == [0, 0]
        # the engine restarts without archive.secondary: nothing will ever deliver these rows
        assert drop_copies_owed_to_a_removed_secondary(scp.db) == 2
        assert {(r.status, "no longer configured" in r.last_error) for r in copy_rows(scp)} == {("ERROR", True)}
        assert {c.secondary_state for c in copies(scp).values()} == {"NONE"}
        assert drop_copies_owed_to_a_removed_secondary(scp.db) == 0
