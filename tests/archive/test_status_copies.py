"""``radbridge status`` names copies the fixity checks found missing or damaged, under "needs attention"."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import generate_uid

from engine.archive.fixity import restore, verify
from engine.cli.queries import engine_status
from engine.cli.status_view import attention
from tests.archive.replica_peer import ct, replicate_until_sent, scp_with_secondary, send


def _archive_lines(data: dict[str, object]) -> list[str]:
    return [line for line in attention({"channels": {}, "jobs": {}, **data}) if line.startswith("archive:")]


def test_a_lost_or_damaged_copy_found_by_fixity_needs_attention_until_it_is_restored(
        tmp_path: Path, corpus: Path) -> None:
    second = tmp_path / "second"
    with scp_with_secondary(tmp_path, str(second)) as (scp, archive):
        assert send(scp.port, [ct(corpus, generate_uid()) for _ in range(3)]) == [0, 0, 0]
        replicate_until_sent(scp, archive)
        data = scp.db.read(engine_status)
        assert data["archive_copies"] == {"missing": 0, "damaged": 0}
        assert _archive_lines(data) == []

        a, b, _ = scp.instances()
        (second / a.path).unlink()
        damaged = bytearray((scp.archive / b.path).read_bytes())
        damaged[-20] ^= 0x40
        (scp.archive / b.path).write_bytes(bytes(damaged))
        assert len(verify(archive, scp.db)[1]) == 2  # what the archive-fixity job records, too

        data = scp.db.read(engine_status)
        assert data["archive_copies"] == {"missing": 1, "damaged": 1}
        assert _archive_lines(data) == [
            "archive: 1 stored copy(ies) missing and 1 damaged when last checked: radbridge archive verify,"
            " then radbridge archive restore"]

        assert all(r.ok for r in restore(archive, scp.db))
        data = scp.db.read(engine_status)
        assert data["archive_copies"] == {"missing": 0, "damaged": 0}
        assert _archive_lines(data) == []
