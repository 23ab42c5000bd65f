"""``radbridge status``'s "needs attention" lines from its data (engine.cli.status_view.attention)."""

from __future__ import annotations

from typing import Any

from engine.cli.status_view import BACKLOG_LATE_SECONDS, attention


def _data(**destinations: dict[str, Any]) -> dict[str, Any]:
    return {"channels": {}, "jobs": {}, "destinations": destinations}


def _queued(queued: int, oldest: float | None, dead: int = 0) -> dict[str, Any]:
    return {"queued": queued, "oldest_queued_seconds": oldest, "dead_letters": dead}


def test_a_destination_whose_oldest_delivery_waits_over_an_hour_needs_attention() -> None:
    """A PACS down all night, or the second archive copy unreachable, showed only as a number in a table."""
    assert attention(_data(pacs=_queued(3, 120.0), **{"archive:secondary": _queued(0, None)})) == []
    lines = attention(_data(pacs=_queued(40, BACKLOG_LATE_SECONDS + 3600.0),
                            **{"archive:secondary": _queued(7, 2.5 * 3600)}))
    assert lines == [
        "destination archive:secondary: 7 delivery(ies) waiting, the oldest for 2.5 h (the last error says why):"
        " radbridge outbox list --destination archive:secondary --status QUEUED",
        "destination pacs: 40 delivery(ies) waiting, the oldest for 2.0 h (the last error says why):"
        " radbridge outbox list --destination pacs --status QUEUED"]


def test_dead_letters_and_an_old_backlog_are_two_lines() -> None:
    lines = attention(_data(pacs=_queued(1, 2 * 3600.0, dead=2)))
    assert [line.split(":")[1].strip() for line in lines] == [
        "2 dead letter(s)", "1 delivery(ies) waiting, the oldest for 2.0 h (the last error says why)"]


def test_an_engine_that_is_not_running_needs_attention() -> None:
    """The engine dead at 3 a.m.: status said "engine: not running" on its first line and then
    "needs attention: nothing" (new-user campaign)."""
    stopped = {"running": False, "pid": None, "data_dir": "var", "source": "configuration"}
    lines = attention({**_data(), "engine": stopped})
    assert len(lines) == 1 and lines[0].startswith("engine: not running (no live pid file in var)")
    assert "radbridge run" in lines[0]
    assert attention({**_data(), "engine": {**stopped, "running": True, "pid": 7}}) == []


def test_an_archive_file_system_below_min_free_bytes_needs_attention(tmp_path) -> None:
    """A full archive disk refused every image with 0xA700 while status said "needs attention: nothing"
    (new-user campaign: the archive on an 8 MiB tmpfs, archive.min_free_bytes 1 GiB)."""
    from engine.cli.status_view import archive_space, archive_space_text

    space = archive_space({"directory": str(tmp_path), "min_free_bytes": 1 << 60})
    assert space is not None and space["free_bytes"] > 0
    [line] = attention({**_data(), "archive_space": space})
    assert line.startswith(f"archive: {tmp_path} has ") and "less than archive.min_free_bytes (1048576.0 TiB)" in line
    assert "every new image is refused (0xA700)" in line
    assert archive_space_text(space).startswith(f"archive: {tmp_path}, ")
    assert attention({**_data(), "archive_space": {**space, "min_free_bytes": 1 << 20}}) == []
    missing = archive_space({"directory": str(tmp_path / "not-yet"), "min_free_bytes": 1 << 60})
    assert missing is not None and missing["free_bytes"] is None
    assert attention({**_data(), "archive_space": missing}) == []


def test_a_dead_letter_line_says_how_to_put_them_back_in_the_queue() -> None:
    """It named only the command that lists them; the replay was in the README's table alone (new-user campaign)."""
    [line] = attention(_data(ehr=_queued(0, None, dead=1)))
    assert line.endswith("; once the cause is fixed: radbridge outbox replay --destination ehr")


def test_the_ae_ar_line_says_how_old_the_newest_is() -> None:
    data = {"channels": {"ris": {"errors": 2, "newest_error_seconds": 3 * 86400.0}}, "jobs": {}, "destinations": {}}
    assert attention(data) == ["channel ris: 2 message(s) answered AE/AR, the newest 3 days ago:"
                               " radbridge messages list --channel ris --status ERROR (or REJECTED); once dealt"
                               " with: radbridge messages ack ID, or --all-before TIME --channel ris"]
    data["channels"]["ris"]["newest_error_seconds"] = 40.0
    assert ", the newest 40 s ago:" in attention(data)[0]


def test_a_full_archive_without_a_reserve_needs_attention_too(tmp_path) -> None:
    """archive.min_free_bytes 0 and the disk full: the log said ENOSPC, status "0 B free; new images are refused
    below 0 B" and nothing under needs attention (new-user campaign)."""
    from engine.cli.status_view import NEARLY_FULL_BYTES, archive_space_text

    full = {"directory": "/srv/archive", "min_free_bytes": 0, "free_bytes": 0}
    [line] = attention({**_data(), "archive_space": full})
    assert line.startswith("archive: /srv/archive has 0 B free and no reserve (archive.min_free_bytes 0)")
    assert archive_space_text(full) == "archive: /srv/archive, 0 B free; no reserve (archive.min_free_bytes 0)"
    assert attention({**_data(), "archive_space": {**full, "free_bytes": NEARLY_FULL_BYTES}}) == []


def test_acknowledged_ae_ar_messages_are_not_counted_under_needs_attention() -> None:
    """hl7fix5: the AE/AR count stayed for ever, however long ago the operator had dealt with them."""
    channel = {"errors": 3, "errors_acknowledged": 1, "newest_error_seconds": 7200.0}
    [line] = attention({**_data(), "channels": {"ris": channel}})
    assert line.startswith("channel ris: 2 message(s) answered AE/AR, the newest 2.0 h ago:")
    assert line.endswith("once dealt with: radbridge messages ack ID, or --all-before TIME --channel ris")
    assert attention({**_data(), "channels": {"ris": {**channel, "errors_acknowledged": 3}}}) == []
