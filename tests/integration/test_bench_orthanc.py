"""bench_fhir's Orthanc side (bench/orthanc_peer.py) against a real Orthanc with its DICOMweb plugin.

So that the QIDO-RS side by side cannot rot unnoticed: the loader must put the benchmark's
studies into Orthanc as radbridge holds them (QIDO-RS answers are the evidence), a loaded
directory must be reused without a second load, and ``bench_fhir --orthanc`` must run end to
end. Orthanc binds every interface, so, as in test_forward_orthanc, the only test outside a
namespace re-runs this module under ``unshare --net`` (loopback only) and reports its result.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bench.orthanc_peer import LOADED_MARK, PLUGIN, OrthancPeer, prepared
from tests.conftest import ROOT, need

_IN_NAMESPACE = "RADBRIDGE_TEST_IN_NETNS"


if os.environ.get(_IN_NAMESPACE) != "1":

    @pytest.mark.timeout(900)
    def test_bench_orthanc_side_in_a_private_network_namespace(tmp_path: Path) -> None:
        need(shutil.which("Orthanc") is not None, "Orthanc not installed")
        need(PLUGIN.exists(), "Orthanc's DICOMweb plugin not installed (make peers installs orthanc-dicomweb)")
        need(shutil.which("unshare") is not None, "unshare not available")
        inner = (f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider"
                 f" --basetemp={tmp_path / 'inner'} {Path(__file__)}")
        done = subprocess.run(["unshare", "--net", "sh", "-c", inner], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, _IN_NAMESPACE: "1"}, timeout=880)
        assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
        assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


def _built(root: Path, studies: int, patients: int) -> Path:
    """A benchmark database as bench_fhir builds it; its path."""
    from bench.bench_fhir import build
    from engine.store.database import Database

    (root / "var").mkdir(parents=True)
    db_file = root / "var" / "radbridge.db"
    db = Database(f"sqlite:///{db_file}", "NORMAL")
    db.migrate()
    build(db, studies, patients)
    db.close()
    return db_file


def _qido(peer: OrthancPeer, query: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{peer.qido}/studies?{query}", headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return list(json.loads(answer.read()))


def _value(study: dict[str, Any], tag: str) -> Any:
    values = study.get(tag, {}).get("Value", [])
    return values[0] if values else None


if os.environ.get(_IN_NAMESPACE) == "1":

    def test_orthanc_holds_the_first_n_studies_as_radbridge_does_and_a_loaded_directory_is_reused(
            tmp_path: Path) -> None:
        db_file = _built(tmp_path / "radbridge", 60, 12)
        with sqlite3.connect(db_file) as db:
            ours = db.execute(
                "SELECT st.study_instance_uid, p.patient_id, st.accession_number, st.study_date,"
                " st.modalities_in_study, (SELECT count(*) FROM series se WHERE se.study_pk = st.id)"
                " FROM studies st JOIN patients p ON p.id = st.patient_pk ORDER BY st.id").fetchall()
        peer = OrthancPeer(tmp_path / "orthanc")
        with prepared(peer, db_file, 40) as held:
            assert held.uids == [row[0] for row in ours[:40]] and held.instances == 80
            for uid, patient_id, accession, date, modality, series_count in ours[:40]:
                (study,) = _qido(peer, f"StudyInstanceUID={uid}")
                assert (_value(study, "00100020"), _value(study, "00080050"), _value(study, "00080020"),
                        _value(study, "00080061"), _value(study, "00201206")) == \
                    (patient_id, accession, date, modality, series_count)
            assert _qido(peer, f"StudyInstanceUID={ours[40][0]}") == []  # only the first 40
            patient = ours[0][1]
            assert len(_qido(peer, f"PatientID={patient}")) == sum(1 for r in ours[:40] if r[1] == patient)
        mark = json.loads((peer.root / LOADED_MARK).read_text())
        with prepared(peer, db_file, 40) as again:  # same directory, same N: no second load
            assert again.load_s == mark["load_s"] and again.uids == held.uids
            assert peer.statistics()["CountInstances"] == 80

    @pytest.mark.timeout(600)
    def test_bench_fhir_orthanc_runs_end_to_end(tmp_path: Path) -> None:
        # 520 studies: 104 CT, so both radbridge and Orthanc have a full 100-entry page.
        done = subprocess.run([sys.executable, "-m", "bench.bench_fhir", "--studies", "520", "--patients", "100",
                               "--requests", "20", "--clients", "2", "--seconds", "1", "--orthanc", "520",
                               "--reuse", str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "RADBRIDGE_BENCH_IN_NETNS": "1"}, timeout=580)  # in one already
        assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
        figures, table = done.stdout.split("\n| measure", 1)
        results = json.loads(figures)
        ours, theirs = results["radbridge"], results["orthanc"]
        assert theirs["loaded_studies"] == 520 and theirs["loaded_instances"] == 1040
        assert theirs["entries_found"] == {"patient": 6, "identifier": 1}  # 520 studies of 100 patients
        for key in ("patient", "identifier"):
            assert theirs[key]["n"] == ours[key]["n"] == 20
        assert theirs["page100"]["n"] == 20 and theirs["reads_per_s"] > 0 and theirs["server_cpu_us_per_read"] > 0
        assert set(results["ratios"]["orthanc"]) == {"patient", "identifier", "page100", "reads_per_s"}
        assert "| reads/s |" in table and len(results["load_average"]["start"]) == 3
