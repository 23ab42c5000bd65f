"""The per-host spool ledger and the free-space reserve (engine.archive.spool_budget)."""

from __future__ import annotations

from pathlib import Path

from engine.archive.spool_budget import HostBytes, below_reserve, free_bytes


def test_a_host_gets_bytes_up_to_its_share_and_others_keep_theirs() -> None:
    ledger = HostBytes(10)
    assert ledger.reserve("10.0.0.1", 6) and ledger.reserve("10.0.0.1", 4)
    assert not ledger.reserve("10.0.0.1", 1)  # its share is taken, nothing more is counted
    assert ledger.held("10.0.0.1") == 10
    assert ledger.reserve("10.0.0.2", 10)  # another host's share is its own


def test_bytes_given_back_can_be_taken_again() -> None:
    ledger = HostBytes(10)
    assert ledger.reserve("h", 10)
    ledger.release("h", 7)
    assert ledger.held("h") == 3 and ledger.reserve("h", 7)
    ledger.release("h", 10)
    assert ledger.held("h") == 0


def test_below_reserve_compares_the_free_space(tmp_path: Path) -> None:
    free = free_bytes(tmp_path)
    assert below_reserve(tmp_path, free + (1 << 40))
    assert not below_reserve(tmp_path, 1)
    assert not below_reserve(tmp_path, 0)  # 0: off
    assert not below_reserve(tmp_path / "gone", 1 << 60)  # not judged here: the store fails on it
