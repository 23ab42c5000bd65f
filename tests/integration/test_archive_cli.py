"""``radbridge run`` keeps two copies; ``archive verify|restore`` and ``studies export`` work on them.

A real engine process (its outbox worker and scheduler copy, check and tier), pynetdicom as
the modality, the CLI as an operator runs it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.archive.replica_peer import ct, send
from tests.conftest import EngineProcess, free_port
from tests.integration.conftest import sqlite_rows, write_engine_yaml


@dataclass
class Stored:
    engine: EngineProcess
    primary: Path
    secondary: Path
    study: str
    other_study: str
    paths: dict[str, str]  # SOP Instance UID -> path in both locations
    originals: dict[str, bytes]

    def db(self) -> Path:
        return self.engine.data_dir / "radbridge.db"

    def states(self) -> dict[str, tuple[str, str]]:
        rows = sqlite_rows(self.db(), "SELECT i.sop_instance_uid, c.primary_state, c.secondary_state FROM instances i"
                           " JOIN instance_copies c ON c.instance_pk = i.id")
        return {uid: (p, s) for uid, p, s in rows}


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _start(engine: EngineProcess, corpus: Path, **archive: object) -> Stored:
    port = free_port()
    primary, secondary = engine.data_dir / "archive", engine.data_dir.parent / "second"
    settings = {"secondary": str(secondary), "replication_retry": {"initial_seconds": 0.2, "max_seconds": 0.2},
                **archive}
    write_engine_yaml(engine, yaml.safe_dump({"dicom": {"port": port, "ae_title": "RADBRIDGE"},
                                          "outbox": {"poll_interval_seconds": 0.2}, "archive": settings}))
    engine.start(wait_port=port)
    study, other = generate_uid(), generate_uid()
    datasets = [ct(corpus, study) for _ in range(3)] + [ct(corpus, other)]
    assert send(port, datasets) == [0] * 4
    rows = sqlite_rows(engine.data_dir / "radbridge.db", "SELECT sop_instance_uid, path FROM instances")
    paths = dict(rows)
    stored = Stored(engine, primary, secondary, study, other, paths,
                    {uid: (primary / path).read_bytes() for uid, path in paths.items()})
    _wait(lambda: {s for _, s in stored.states().values()} == {"VERIFIED"}, "copies verified")
    return stored


@pytest.fixture
def stored(engine_process: EngineProcess, corpus: Path) -> Stored:
    stored = _start(engine_process, corpus, verify_sample=0)
    engine_process.stop()
    return stored


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_reports_a_flipped_byte_a_damaged_meta_and_a_lost_copy(stored: Stored) -> None:
    a, b, c = sorted(uid for uid in stored.paths if stored.paths[uid].startswith(stored.study))
    _flip(stored.secondary / stored.paths[a], len(stored.originals[a]) - 100)  # in the pixel data
    (stored.primary / stored.paths[b]).unlink()
    _flip(stored.primary / stored.paths[c], 150)  # inside the File Meta Information
    result = stored.engine.cli("archive", "verify", "--json")
    assert result.returncode == 1, result.stderr
    found = {(p["sop_instance_uid"], p["location"], p["problem"]) for p in json.loads(result.stdout)["problems"]}
    assert found == {(a, "secondary", "DAMAGED"), (b, "primary", "MISSING"), (c, "primary", "DAMAGED")}
    assert stored.states()[a] == ("PRESENT", "DAMAGED") and stored.states()[b] == ("MISSING", "VERIFIED")
    assert stored.engine.cli("archive", "verify", "--study", stored.other_study).returncode == 0
    text = stored.engine.cli("archive", "verify").stdout
    assert "4 instance(s) checked, 3 problem(s)" in text


def test_restore_rebuilds_damaged_and_lost_copies_from_the_other_location(stored: Stored) -> None:
    a, b = sorted(uid for uid in stored.paths if stored.paths[uid].startswith(stored.study))[:2]
    _flip(stored.secondary / stored.paths[a], len(stored.originals[a]) - 100)
    (stored.primary / stored.paths[b]).unlink()
    result = stored.engine.cli("archive", "restore", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    repairs = {(r["sop_instance_uid"], r["location"], r["source"], r["ok"]) for r in json.loads(result.stdout)}
    assert repairs == {(a, "secondary", "primary", True), (b, "primary", "secondary", True)}
    for uid, path in stored.paths.items():
        assert (stored.primary / path).read_bytes() == stored.originals[uid]
        assert (stored.secondary / path).read_bytes() == stored.originals[uid]
    assert stored.engine.cli("archive", "verify").returncode == 0
    assert set(stored.states().values()) == {("PRESENT", "VERIFIED")}


def test_restore_fails_loudly_when_no_intact_copy_is_left(stored: Stored) -> None:
    a = next(uid for uid in stored.paths if stored.paths[uid].startswith(stored.study))
    (stored.primary / stored.paths[a]).unlink()
    (stored.secondary / stored.paths[a]).unlink()
    result = stored.engine.cli("archive", "restore")
    assert result.returncode == 1 and "no intact copy" in result.stdout


def test_verify_and_restore_cover_the_old_versions_kept_as_history(
        engine_process: EngineProcess, corpus: Path) -> None:
    """A resend with other content replaces an instance: its first version stays, in both locations, and
    ``archive verify`` / ``restore`` check and rebuild it like a current one, reporting it by number."""
    stored = _start(engine_process, corpus, verify_sample=0)
    uid = next(u for u in stored.paths if stored.paths[u].startswith(stored.study))
    changed = dcmread(stored.primary / stored.paths[uid])
    changed.StudyDescription = "resent with other content"
    port = yaml.safe_load((engine_process.config_dir / "engine.yaml").read_text())["dicom"]["port"]
    assert send(port, [changed]) == [0]
    old = "SELECT path, secondary_state FROM instance_versions"
    _wait(lambda: [r[1] for r in sqlite_rows(stored.db(), old)] == ["VERIFIED"]
          and set(stored.states().values()) == {("PRESENT", "VERIFIED")}, "both versions copied")
    engine_process.stop()
    ((old_path, _),) = sqlite_rows(stored.db(), old)
    assert old_path == stored.paths[uid]
    _flip(stored.secondary / old_path, len(stored.originals[uid]) - 100)
    result = engine_process.cli("archive", "verify", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["old_versions_checked"] == 1
    assert [(p["sop_instance_uid"], p["location"], p["problem"], p["version"], p["replaced"])
            for p in report["problems"]] == [(uid, "secondary", "DAMAGED", 1, True)]
    assert "v1 (replaced)" in engine_process.cli("archive", "verify").stdout
    restored = engine_process.cli("archive", "restore", "--json")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert [(r["sop_instance_uid"], r["location"], r["source"], r["ok"], r["version"], r["replaced"])
            for r in json.loads(restored.stdout)] == [(uid, "secondary", "primary", True, 1, True)]
    assert (stored.secondary / old_path).read_bytes() == stored.originals[uid]
    assert engine_process.cli("archive", "verify").returncode == 0


def test_export_writes_the_current_instances_as_part10_files_and_is_audited(stored: Stored, tmp_path: Path) -> None:
    out = tmp_path / "export"
    result = stored.engine.cli("studies", "export", stored.study, str(out))
    assert result.returncode == 0, result.stderr
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 3 and not list(out.rglob(".*"))
    for f in files:
        assert f.read_bytes() == stored.originals[f.stem]
        assert dcmread(f).StudyInstanceUID == stored.study
    events = sqlite_rows(stored.db(), "SELECT action, object_id, actor, detail FROM audit_events")
    assert [(a, o) for a, o, _, _ in events] == [("study.export", stored.study)]
    assert events[0][2] and json.loads(events[0][3])["instances"] == 3
    assert stored.engine.cli("studies", "export", "1.2.3", str(out)).returncode == 1


def test_tiered_instances_leave_the_primary_and_export_reads_the_secondary(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    stored = _start(engine_process, corpus, tier_after_days=0.00001, tier_interval_seconds=0.5, verify_sample=0)
    _wait(lambda: {p for p, _ in stored.states().values()} == {"TIERED"}, "primary copies tiered")
    engine_process.stop()
    assert not any((stored.primary / p).exists() for p in stored.paths.values())
    out = tmp_path / "export"
    assert engine_process.cli("studies", "export", stored.study, str(out)).returncode == 0
    assert {f.stem: f.read_bytes() for f in out.rglob("*.dcm")} == {
        uid: data for uid, data in stored.originals.items() if stored.paths[uid].startswith(stored.study)}
    assert engine_process.cli("archive", "verify").returncode == 0  # a tiered primary is not a loss


def test_the_fixity_job_finds_a_damaged_copy_and_logs_no_patient_data(
        engine_process: EngineProcess, corpus: Path) -> None:
    stored = _start(engine_process, corpus, verify_sample=10, verify_interval_seconds=0.5)
    uid = next(iter(stored.paths))
    _flip(stored.secondary / stored.paths[uid], len(stored.originals[uid]) - 10)
    _wait(lambda: stored.states()[uid][1] == "DAMAGED", "the job to find the damage")
    engine_process.stop()
    runs = sqlite_rows(stored.db(), "SELECT runs, last_result FROM job_runs WHERE job_id = 'archive-fixity'")
    assert runs and runs[0][0] >= 1
    log = engine_process.log()
    assert f"secondary copy of instance {uid} is DAMAGED" in log
    name = str(dcmread(corpus / "dicom" / "single" / "CT_small.dcm").PatientName)
    assert name.split("^")[0] not in log


def test_the_engine_refuses_to_start_with_an_unreachable_secondary(engine_process: EngineProcess) -> None:
    port, s3 = free_port(), free_port()
    write_engine_yaml(engine_process, f"""\
        dicom: {{port: {port}, ae_title: RADBRIDGE}}
        archive:
          secondary: s3://archive/
          s3: {{endpoint_url: "http://127.0.0.1:{s3}", region: us-east-1}}
        """)
    engine_process.env.update({"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    result = engine_process.cli("run")
    assert result.returncode != 0
    assert "archive.secondary" in result.stderr and "s3://archive/" in result.stderr, result.stderr


def test_a_secondary_configured_later_receives_the_instances_stored_before(
        engine_process: EngineProcess, corpus: Path) -> None:
    port = free_port()
    write_engine_yaml(engine_process, yaml.safe_dump({"dicom": {"port": port, "ae_title": "RADBRIDGE"}}))
    engine_process.start(wait_port=port)
    assert send(port, [ct(corpus, generate_uid()) for _ in range(2)]) == [0, 0]
    engine_process.stop()
    secondary = engine_process.data_dir.parent / "second"
    write_engine_yaml(engine_process, yaml.safe_dump({
        "dicom": {"port": port, "ae_title": "RADBRIDGE"}, "outbox": {"poll_interval_seconds": 0.2},
        "archive": {"secondary": str(secondary)}}))
    engine_process.start(wait_port=port)
    db = engine_process.data_dir / "radbridge.db"
    _wait(lambda: sqlite_rows(db, "SELECT secondary_state FROM instance_copies") == [("VERIFIED",)] * 2,
          "the earlier instances copied")
    engine_process.stop()
    for (path,) in sqlite_rows(db, "SELECT path FROM instances"):
        assert (secondary / path).read_bytes() == (engine_process.data_dir / "archive" / path).read_bytes()
    assert "2 instance(s) stored before the secondary location was configured" in engine_process.log()
