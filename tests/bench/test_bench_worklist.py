"""bench/bench_worklist.py: its entries and its comparison with DCMTK wlmscpfs at small sizes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from datetime import date

import pytest

from bench.bench_worklist import DAYS, STATIONS, _entry, ratio
from tests.conftest import ROOT, need
from tests.dicom.conftest import dcmtk_env

TODAY = date(2026, 12, 6)


def test_the_first_entries_fall_on_today() -> None:
    assert {_entry(n, TODAY)["date"] for n in range(STATIONS)} == {"20261206"}


def test_the_default_peer_entries_still_spread_one_station_round_per_day() -> None:
    per_day = Counter(_entry(n, TODAY)["date"] for n in range(10_000))
    assert len(per_day) == DAYS and set(per_day.values()) == {STATIONS}


def test_a_ratio_with_nothing_matched_is_not_a_division() -> None:
    assert ratio(0.0, 0.0) == ratio(5.0, 0.0) == "n/a (no responses)"
    assert ratio(3.0, 2.0) == "1.5x"


@pytest.mark.timeout(600)
def test_a_small_run_compares_with_wlmscpfs() -> None:
    path = dcmtk_env()["PATH"]
    need(shutil.which("wlmscpfs", path=path) is not None and shutil.which("findscu", path=path) is not None,
         "DCMTK (wlmscpfs, findscu) is not installed")
    run = subprocess.run([sys.executable, "-m", "bench.bench_worklist", "--steps", "30", "--peer-entries", "12",
                          "--runs", "1", "--broad-runs", "1"], cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"broad: radbridge \d+/s \(12\), wlmscpfs \d+/s \(12\): radbridge/wlmscpfs = [\d.]+x",
                     run.stdout), run.stdout
