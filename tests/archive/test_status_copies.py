"""``radbridge status`` names copies the fixity checks found missing or damaged, under "needs attention"."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any

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


def test_restore_in_a_shell_without_the_secondary_says_the_recorded_copy_is_not_used(
        tmp_path: Path, corpus: Path, monkeypatch: Any, capsys: Any) -> None:
    """The engine runs with RADBRIDGE_ARCHIVE_SECONDARY, the operator's shell without it (new-user campaign):
    ``archive restore`` said only "FAILED ... from - no intact copy to restore from" of an image whose second
    copy was intact, as if it were lost; ``verify`` checked the primary alone without saying so."""
    from engine.archive.archive import Archive
    from engine.cli import archive as archive_cli

    second = tmp_path / "second"
    with scp_with_secondary(tmp_path, str(second)) as (scp, archive):
        assert send(scp.port, [ct(corpus, generate_uid())]) == [0]
        replicate_until_sent(scp, archive)
        (inst,) = scp.instances()
        (scp.archive / inst.path).unlink()
        shell = Archive(primary=archive.primary)  # this shell's configuration: no secondary
        monkeypatch.setattr(archive_cli, "_archive", lambda args: shell)

        for command, fn in (("verify", archive_cli.cmd_verify), ("restore", archive_cli.cmd_restore)):
            assert fn(Namespace(study=None, json=False, archive_command=command), scp.db) == 1
            err = capsys.readouterr().err
            assert f"radbridge archive {command}: 1 instance(s) have a copy recorded in the secondary location" in err
            assert "RADBRIDGE_ARCHIVE_SECONDARY" in err and "engine's environment" in err

        monkeypatch.setattr(archive_cli, "_archive", lambda args: archive)  # the engine's environment
        assert archive_cli.cmd_restore(Namespace(study=None, json=False, archive_command="restore"), scp.db) == 0
        assert capsys.readouterr().err == ""
