"""The README's quick start and docs/mapping.md's recipes, run for real.

The engine runs on the shipped ``config/`` and ``mappings/`` (ports and data directory from
the environment, as the README says); the commands are the README's own code blocks, with
only the ports and the path of the virtualenv replaced, sent by the real CLI and DCMTK's
``findscu``. The recipes for "which PID-3 repetition is the MRN" and "which station gets this
procedure" are applied to copies of the shipped files exactly as docs/mapping.md words them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, need, wait_for_port

README = ROOT / "README.md"
MAPPING_DOC = ROOT / "docs" / "mapping.md"
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent


@dataclass
class Engine:
    """``radbridge run`` on a configuration directory, as a user starts it."""

    env: dict[str, str]
    mllp: int
    dicom: int
    log: Path
    proc: subprocess.Popen[bytes]

    def sh(self, command: str) -> subprocess.CompletedProcess[str]:
        """Run a README command line in bash from the repository root."""
        return subprocess.run(["bash", "-c", command], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_engine(tmp: Path, config_dir: Path, mappings_dir: Path | None = None) -> Engine:
    """Start ``radbridge --config DIR run`` from the repository root on free ports."""
    need(shutil.which("findscu") is not None, "DCMTK findscu not installed")
    need((BIN / "radbridge").exists(), f"radbridge entry point not installed in {BIN}")
    data = tmp / "var"
    data.mkdir()
    mllp, dicom, http, reports = free_port(), free_port(), free_port(), free_port()
    env = {**os.environ, "RADBRIDGE_DATA_DIR": str(data), "RADBRIDGE_MLLP_PORT": str(mllp),
           "RADBRIDGE_DICOM_PORT": str(dicom), "RADBRIDGE_HTTP_PORT": str(http),
           "RADBRIDGE_REPORTS_MLLP_PORT": str(reports), "TCP_NODELAY": "1"}  # fmt: skip
    for name in ("RADBRIDGE_CONFIG", "RADBRIDGE_DATABASE_URL", "RADBRIDGE_TIMEZONE", "RADBRIDGE_DICOM_AET",
                 "RADBRIDGE_MLLP_HOST", "RADBRIDGE_MAPPINGS_DIR", "RADBRIDGE_EHR_MLLP"):
        env.pop(name, None)  # the shipped defaults, as on a fresh machine
    if mappings_dir is not None:
        env["RADBRIDGE_MAPPINGS_DIR"] = str(mappings_dir)
    log = tmp / "engine.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "radbridge"), "--config", str(config_dir), "run"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    engine = Engine(env, mllp, dicom, log, proc)
    try:
        wait_for_port(mllp, proc=proc)
        wait_for_port(dicom, proc=proc)
    except Exception:
        engine.stop()
        raise
    return engine


# --------------------------------------------------------------------------- the README's commands


def _quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]


def readme_commands(engine: Engine) -> list[str]:
    """The quick start's command lines after ``make run``, ports and virtualenv made this test's."""
    blocks = re.findall(r"^```bash\n(.*?)^```", _quick_start(), flags=re.M | re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith("make "):
                lines.append(command)
    return [
        c.replace("127.0.0.1:2575", f"127.0.0.1:{engine.mllp}")
        .replace("127.0.0.1 11112", f"127.0.0.1 {engine.dicom}")
        .replace(".venv/bin/", f"{BIN}/")
        for c in lines
    ]


def _responses(output: str) -> list[str]:
    """The pending (matching) responses of one findscu run, as printed text."""
    return re.split(r"Find Response: \d+ \(Pending\)", output)[1:]


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[Engine]:
    """The engine on the shipped config/ and mappings/ (no copies)."""
    engine = start_engine(tmp_path, ROOT / "config")
    yield engine
    engine.stop()


def test_the_readme_quick_start_works_as_written(shipped: Engine) -> None:
    commands = readme_commands(shipped)
    sends = [c for c in commands if " send " in c]
    finds = [c for c in commands if c.startswith("findscu ")]
    assert len(sends) == 2 and len(finds) == 1, commands

    sent = shipped.sh(sends[0])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    files = [word for word in sends[0].split() if word.startswith("examples/")]
    assert sent.stdout.splitlines() == [f"{name}\tAA" for name in files], sent.stdout  # as examples/README.md shows

    found = shipped.sh(finds[0])
    assert found.returncode == 0, found.stderr
    responses = _responses(found.stdout + found.stderr)
    assert len(responses) == 1, found.stdout + found.stderr
    for value in ("EX-ACC-1001", "Example^Alva^Maria", "EX100234", "[CT]", "CT_SCANNER_1"):
        assert value in responses[0]

    (store,) = [c for c in commands if c.startswith("storescu ")]
    stored = shipped.sh(store)
    assert stored.returncode == 0, stored.stderr
    studies = shipped.sh(next(c for c in commands if c.endswith("radbridge studies list")))
    (study,) = [line.split("\t") for line in studies.stdout.splitlines()[1:]]
    assert (study[0], study[1], study[2], study[4], study[7]) == (
        "2.25.207364417093781209387511049871602031001", "EX100234", "EX-ACC-1001", "CT", "True"), studies.stdout
    archived = list((Path(shipped.env["RADBRIDGE_DATA_DIR"]) / "archive").rglob("*.dcm"))
    assert len(archived) == 1 and b"Example^Alva^Maria" in archived[0].read_bytes()

    cancel = shipped.sh(sends[1])
    assert cancel.returncode == 0 and cancel.stdout.split("\t")[1].strip() == "AA", cancel.stdout
    again = shipped.sh(finds[0])
    assert again.returncode == 0 and _responses(again.stdout + again.stderr) == [], again.stderr

    listed = shipped.sh(next(c for c in commands if "messages list" in c))
    assert listed.returncode == 0
    newest_first = ["EX-ORM-0002", "EX-OMI-0001", "EX-ORM-0001", "EX-ADT-0001"]
    positions = [listed.stdout.find(control_id) for control_id in newest_first]
    assert -1 not in positions and positions == sorted(positions), listed.stdout
    status = shipped.sh(next(c for c in commands if c.endswith(" status")))
    assert status.returncode == 0 and "ris-inbound" in status.stdout, status.stdout


def test_the_log_names_what_listens_and_the_fhir_api_refuses_phi_without_a_token(shipped: Engine) -> None:
    log = shipped.log.read_text()
    assert f"listening for MLLP on 127.0.0.1:{shipped.mllp}" in log
    assert f"DICOM (worklist, MPPS, C-STORE, C-ECHO) listening on 127.0.0.1:{shipped.dicom} as RADBRIDGE" in log
    port = shipped.env["RADBRIDGE_HTTP_PORT"]
    assert f"FHIR R4 API listening on 127.0.0.1:{port} at /fhir (auth: smart)" in log
    base = f"http://127.0.0.1:{port}/fhir"
    assert httpx.get(f"{base}/metadata", timeout=10).json()["fhirVersion"] == "4.0.1"
    refused = httpx.get(f"{base}/ImagingStudy", timeout=10)
    assert refused.status_code == 401 and refused.json()["resourceType"] == "OperationOutcome"


def test_oru_is_refused_and_kept_and_makes_no_worklist_entry(shipped: Engine, tmp_path: Path) -> None:
    """The README: nothing on the shipped channel applies ORU^R01: AR 200, kept as REJECTED (issue #11)."""
    oru = tmp_path / "oru.hl7"
    oru.write_bytes(
        b"MSH|^~\\&|REP|NORTHSIDE|RADBRIDGE|RADIOLOGY|20261201120000||ORU^R01^ORU_R01|EX-ORU-0001|P|2.5.1\r"
        b"PID|1||EX100234^^^NORTHSIDE^MR||Example^Alva^Maria\r"
        b"OBR|1|EX-PLC-1001^RIS|EX-FIL-1001^RIS|CTHEAD^CT head without contrast^L||||||||||||||EX-ACC-1001\r"
        b"OBX|1|TX|CTHEAD^CT head^L||No acute findings.||||||F\r"
    )
    assert _send(shipped, oru) == ["AR"]
    listed = shipped.sh(f"{BIN}/radbridge messages list --type ORU^R01 --json")
    assert [(m["control_id"], m["status"]) for m in json.loads(listed.stdout)] == [("EX-ORU-0001", "REJECTED")]
    assert _find(shipped, "CT_SCANNER_1") == []


# --------------------------------------------------------------------------- docs/mapping.md's recipes


def _doc_section(title: str) -> str:
    text = MAPPING_DOC.read_text(encoding="utf-8")
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _copy_shipped(tmp: Path) -> tuple[Path, Path]:
    config, mappings = tmp / "config", tmp / "mappings"
    shutil.copytree(ROOT / "config", config)
    shutil.copytree(ROOT / "mappings", mappings)
    return config, mappings


def _find(engine: Engine, station: str) -> list[str]:
    done = subprocess.run(
        ["findscu", "-W", "-aet", station, "-aec", "RADBRIDGE", "127.0.0.1", str(engine.dicom),
         "-k", "PatientName=", "-k", "PatientID=", "-k", "IssuerOfPatientID=", "-k", "AccessionNumber=",
         "-k", f"ScheduledProcedureStepSequence[0].ScheduledStationAETitle={station}"],
        env=engine.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return _responses(done.stdout + done.stderr)


def _send(engine: Engine, *files: Path) -> list[str]:
    done = subprocess.run([str(BIN / "radbridge"), "send", f"127.0.0.1:{engine.mllp}", *map(str, files)],
                          env=engine.env, capture_output=True, text=True, timeout=60)  # fmt: skip
    return [line.split("\t")[1] for line in done.stdout.splitlines()]


def test_the_station_rules_recipe_schedules_by_procedure_code(tmp_path: Path) -> None:
    section = _doc_section("Which station gets this procedure")
    config, mappings = _copy_shipped(tmp_path)
    # "delete the modality's row from modality_station.csv (here the CT row)"
    table = mappings / "tables" / "modality_station.csv"
    rows = table.read_text().splitlines(keepends=True)
    assert any(r.startswith("CT,") for r in rows)
    table.write_text("".join(r for r in rows if not r.startswith("CT,")))
    # "then write the rules in config/engine.yaml"
    rules = next(b for b in re.findall(r"^```yaml\n(.*?)^```", section, flags=re.M | re.S) if "station_rules" in b)
    with open(config / "engine.yaml", "a") as out:
        out.write("\n" + rules)
    engine = start_engine(tmp_path, config, mappings)
    try:
        assert _send(engine, EXAMPLES / "01_adt_a04_register.hl7", EXAMPLES / "02_orm_o01_ct_head.hl7") == ["AA", "AA"]
        assert "CT_SCANNER_2" in section  # the doc says a CTHEAD order goes there
        found = _find(engine, "CT_SCANNER_2")
        assert len(found) == 1 and "EX-ACC-1001" in found[0]
        assert _find(engine, "CT_SCANNER_1") == []
    finally:
        engine.stop()


def test_the_mapping_recipe_for_the_mrn_keeps_patient_and_orders_together(tmp_path: Path) -> None:
    section = _doc_section("Which PID-3 repetition is the MRN")
    recipe = section.split("**Recipe 1", 1)[1].split("**Recipe 2", 1)[0]
    replacements = re.findall(r"`([^`]+)` by\s+`([^`]+)`", recipe)
    assert len(replacements) == 6, replacements
    config, mappings = _copy_shipped(tmp_path)
    for name in ("adt-to-patient.yaml", "order-to-worklist.yaml"):
        path = mappings / name
        text = path.read_text()
        for old, new in replacements:
            # PID-3 is read in both files, MRG-1 (the merges) only in adt-to-patient.yaml
            assert old in text or (old.startswith(("MRG", "each: MRG")) and name == "order-to-worklist.yaml"), (
                f"{name}: the recipe replaces {old!r}, which is not there")
            text = text.replace(old, new)
        path.write_text(text)
    assert "MRG-1(4.1=NORTHSIDE).1" in (mappings / "adt-to-patient.yaml").read_text()
    # Both feeds send the national id first, the hospital's MRN second.
    reordered = []
    for name in ("01_adt_a04_register.hl7", "02_orm_o01_ct_head.hl7"):
        raw = (EXAMPLES / name).read_bytes().replace(
            b"|EX100234^^^NORTHSIDE^MR|", b"|19800514-9999^^^NATIONAL^NI~EX100234^^^NORTHSIDE^MR|"
        )
        (tmp_path / name).write_bytes(raw)
        reordered.append(tmp_path / name)
    engine = start_engine(tmp_path, config, mappings)
    try:
        assert _send(engine, *reordered) == ["AA", "AA"]
        found = _find(engine, "CT_SCANNER_1")
        assert len(found) == 1
        assert "[EX100234]" in found[0] and "[NORTHSIDE" in found[0] and "Example^Alva^Maria" in found[0]
    finally:
        engine.stop()
    with sqlite3.connect(tmp_path / "var" / "radbridge.db") as db:
        assert db.execute("SELECT patient_id, issuer FROM patients").fetchall() == [("EX100234", "NORTHSIDE")]


def _national_first(tmp: Path, *names: str) -> list[Path]:
    """The examples as a feed that sends the national id first and the hospital's MRN second."""
    out = []
    for name in names:
        raw = (EXAMPLES / name).read_bytes().replace(
            b"|EX100234^^^NORTHSIDE^MR|", b"|19800514-9999^^^NATIONAL^NI~EX100234^^^NORTHSIDE^MR|"
        )
        (tmp / name).write_bytes(raw)
        out.append(tmp / name)
    return out


def test_the_trusted_issuers_recipe_keeps_patient_and_orders_together(tmp_path: Path) -> None:
    section = _doc_section("Which PID-3 repetition is the MRN")
    recipe = section.split("**Recipe 2", 1)[1]
    (block,) = re.findall(r"^```yaml\n(.*?)^```", recipe, flags=re.M | re.S)
    assert "trusted_issuers: [NORTHSIDE]" in block
    config, mappings = _copy_shipped(tmp_path)
    with open(config / "engine.yaml", "a") as out:
        out.write("\n" + block)
    engine = start_engine(tmp_path, config, mappings)
    try:
        sent = _national_first(tmp_path, "01_adt_a04_register.hl7", "02_orm_o01_ct_head.hl7")
        assert _send(engine, *sent) == ["AA", "AA"]
        found = _find(engine, "CT_SCANNER_1")
        assert len(found) == 1
        assert "[EX100234]" in found[0] and "[NORTHSIDE" in found[0] and "Example^Alva^Maria" in found[0]
    finally:
        engine.stop()
    with sqlite3.connect(tmp_path / "var" / "radbridge.db") as db:
        assert db.execute("SELECT patient_id, issuer FROM patients").fetchall() == [("EX100234", "NORTHSIDE")]


def test_an_order_with_the_trusted_id_second_is_one_patient_on_the_worklist(tmp_path: Path) -> None:
    """Issue #11's reproduction over the wire: trusted NATIONAL, an ORM with NORTHSIDE~NATIONAL.

    Before the fix the demographics went to NATIONAL and the order (and the worklist's
    PatientID) to a second, nameless patient EX100234/NORTHSIDE.
    """
    import asyncio

    from tests.integration.conftest import Sender

    config, mappings = _copy_shipped(tmp_path)
    with open(config / "engine.yaml", "a") as out:
        out.write("\npatients:\n  trusted_issuers: [NATIONAL]\n")
    raw = (EXAMPLES / "02_orm_o01_ct_head.hl7").read_bytes().replace(
        b"|EX100234^^^NORTHSIDE^MR|", b"|EX100234^^^NORTHSIDE^MR~19800514-9999^^^NATIONAL^NI|"
    )
    assert b"NATIONAL" in raw
    engine = start_engine(tmp_path, config, mappings)
    try:
        async def send() -> str:
            sender = Sender(engine.mllp, timeout=60)
            try:
                return (await sender.send(raw.replace(b"\n", b"\r"))).code
            finally:
                if sender.writer is not None:
                    sender.writer.close()

        assert asyncio.run(send()) == "AA"
        found = _find(engine, "CT_SCANNER_1")
        assert len(found) == 1
        # PatientID is LO, padded to an even length
        assert "[19800514-9999 ]" in found[0] and "[NATIONAL" in found[0] and "Example^Alva^Maria" in found[0]
    finally:
        engine.stop()
    with sqlite3.connect(tmp_path / "var" / "radbridge.db") as db:
        assert db.execute("SELECT patient_id, issuer, patient_name FROM patients").fetchall() == [
            ("19800514-9999", "NATIONAL", "Example^Alva^Maria")]
        assert db.execute("SELECT patient_id, issuer FROM patient_other_ids").fetchall() == [
            ("EX100234", "NORTHSIDE")]
