"""Archive consistency: tiering survives a crash between its steps (in process, real locations)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from engine.archive.fixity import verify
from engine.archive.fs_location import FileLocation
from engine.archive.tiering import tier
from tests.archive.replica_peer import copies, ct, replicate_until_sent, scp_with_secondary, send


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

