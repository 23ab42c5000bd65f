"""Reconciliation end to end: an ORM over MLLP (python-hl7), then DCMTK storescu sends the corpus study.

A running engine (``radbridge run``) gets the order on its MLLP channel; the
modality sends images whose header says "DOE^J1"; the stored copies carry the
order's patient name, with the previous values in OriginalAttributesSequence.
The late-order path (images first, the order afterwards, reconciled by the
background job) and ``radbridge studies link`` run against the same engine.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from pydicom import dcmread

from tests.conftest import ROOT, EngineProcess, free_port, need, wait_for_port

pytestmark = pytest.mark.slow

_ENV = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}


def orm(n: int, pid: str, accession: str, name: str = "DÖE^JOHN") -> str:
    obr = f"OBR|1|PL{n}|FL{n}|MRWRIST^MR wrist^L" + "|" * 14 + f"{accession}|RP{n}|SPS{n}" + "|" * 4 + "MR"
    return "\r".join([
        f"MSH|^~\\&|RIS|NORTH|RADBRIDGE|NORTH|20261205080000||ORM^O01|R{n}|P|2.5.1||||||UNICODE UTF-8",
        f"PID|1||{pid}^^^NORTH^MR||{name}||19600101|M",
        "PV1|1|O|RAD||||1234^REFER^DOC",
        f"ORC|NW|PL{n}|FL{n}||SC||^^^20261205093000^^R",
        obr,
    ]) + "\r"  # fmt: skip


async def _send(port: int, text: str) -> str:
    reader, writer = await open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    writer.writemessage(hl7.parse(text))
    await writer.drain()
    ack = await asyncio.wait_for(reader.readmessage(), 30)
    writer.close()
    return str(ack.segment("MSA")[1])


def send(port: int, text: str) -> str:
    return asyncio.run(_send(port, text))


@pytest.fixture
def engine(engine_process: EngineProcess) -> Iterator[tuple[EngineProcess, int, int]]:
    need(shutil.which("storescu") is not None, "DCMTK storescu not installed")
    mllp, dicom = free_port(), free_port()
    (engine_process.config_dir / "engine.yaml").write_text(f"""
data_dir: {engine_process.data_dir}
mappings_dir: {ROOT / 'mappings'}
dicom: {{port: {dicom}}}
reconcile: {{poll_interval_seconds: 0.3}}
""")
    (engine_process.config_dir / "channels" / "ris.yaml").write_text(f"""
name: ris-inbound
source: {{type: mllp, port: {mllp}}}
accept: {{message_types: ["ADT^*", "ORM^O01"]}}
mapping: [adt-to-patient, order-to-worklist]
handlers: [patients, orders]
""")
    engine_process.start(wait_port=mllp)
    wait_for_port(dicom, proc=engine_process.proc)
    yield engine_process, mllp, dicom


def storescu(port: int, files: list[Path]) -> None:
    args = ["storescu", "-aet", "MR1", "-aec", "RADBRIDGE", "127.0.0.1", str(port), *map(str, files)]
    subprocess.run(args, env=_ENV, check=True, capture_output=True, timeout=120)


def stored(engine: EngineProcess) -> list[tuple[str, Path, Any]]:
    """(SOP Instance UID, file, study order_pk) of every indexed instance."""
    with sqlite3.connect(engine.data_dir / "radbridge.db") as conn:
        rows = conn.execute("SELECT i.sop_instance_uid, i.path, s.order_pk FROM instances i"
                            " JOIN studies s ON s.id = i.study_pk ORDER BY i.id").fetchall()
    return [(uid, engine.data_dir / "archive" / path, order_pk) for uid, path, order_pk in rows]


def wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout}s")
        time.sleep(0.2)


def _corpus_study(corpus: Path) -> list[Path]:
    return sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[:4]


def test_images_sent_after_an_order_over_mllp_are_coerced(engine, corpus: Path) -> None:
    proc, mllp, dicom = engine
    assert send(mllp, orm(1, "583295", "MOF5026")) == "AA"
    files = _corpus_study(corpus)
    storescu(dicom, files)
    rows = stored(proc)
    assert len(rows) == len(files) and all(order_pk is not None for _, _, order_pk in rows)
    sources = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    for uid, path, _ in rows:
        ds = dcmread(path)
        assert (str(ds.PatientName), ds.SpecificCharacterSet, ds.StudyID) == ("DÖE^JOHN", "ISO_IR 192", "RP1")
        assert ds.RequestAttributesSequence[0].ScheduledProcedureStepID == "SPS1"
        assert str(ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientName) == "DOE^J1"
        assert ds.PixelData == dcmread(sources[uid]).PixelData
    dump = subprocess.run(["dcmdump", str(rows[0][1])], capture_output=True, text=True, timeout=60).stdout
    assert "[DÖE^JOHN]" in dump and "(0400,0565) CS [COERCE]" in dump
    status = proc.cli("status", "--json")
    assert '"scheduled": 1' in status.stdout


def test_a_late_order_reconciles_the_stored_study_in_the_background(engine, corpus: Path) -> None:
    proc, mllp, dicom = engine
    files = _corpus_study(corpus)
    storescu(dicom, files)
    assert all(order_pk is None for _, _, order_pk in stored(proc))
    listed = proc.cli("studies", "list", "--unscheduled", "--json")
    assert "MOF5026" in listed.stdout
    assert send(mllp, orm(2, "583295", "MOF5026")) == "AA"
    wait_for(lambda: all(order_pk is not None for _, _, order_pk in stored(proc)))
    for _, path, _ in stored(proc):
        ds = dcmread(path)
        assert str(ds.PatientName) == "DÖE^JOHN" and len(ds.OriginalAttributesSequence) == 1


def test_studies_link_reconciles_with_the_operators_choice(engine, corpus: Path) -> None:
    proc, mllp, dicom = engine
    files = _corpus_study(corpus)
    storescu(dicom, files)
    assert send(mllp, orm(3, "REAL42", "ACC42", name="REAL^PATIENT")) == "AA"
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    done = proc.cli("studies", "link", study_uid, "ACC42")
    assert done.returncode == 0, done.stderr
    for _, path, order_pk in stored(proc):
        ds = dcmread(path)
        assert order_pk is not None and (ds.PatientID, str(ds.PatientName)) == ("REAL42", "REAL^PATIENT")
    unknown = proc.cli("studies", "link", study_uid, "NO-SUCH-ACCESSION")
    assert unknown.returncode == 1 and "NO-SUCH-ACCESSION" in unknown.stderr


def adt_a40(survivor: str, name: str, prior: str) -> str:
    return "\r".join([
        "MSH|^~\\&|HIS|NORTH|RADBRIDGE|NORTH|20261205100000||ADT^A40^ADT_A39|M40|P|2.5.1",
        "EVN|A40|20261205100000",
        f"PID|1||{survivor}^^^NORTH^MR||{name}||19500505|F",
        f"MRG|{prior}^^^NORTH^MR",
    ]) + "\r"  # fmt: skip


def test_trauma_images_follow_an_a40_to_the_real_patient(engine, corpus: Path, tmp_path: Path) -> None:
    proc, mllp, dicom = engine
    assert send(mllp, orm(4, "TRAUMA4", "MOF5026", name="UNKNOWN^TRAUMA")) == "AA"
    files = []
    for src in _corpus_study(corpus)[:2]:  # the modality took the trauma identity from the worklist
        ds = dcmread(src)
        ds.PatientID = "TRAUMA4"
        ds.PatientName = "UNKNOWN^TRAUMA"
        files.append(tmp_path / src.name)
        ds.save_as(files[-1])
    storescu(dicom, files)
    assert all(order_pk is not None for _, _, order_pk in stored(proc))
    assert send(mllp, adt_a40("REAL4", "REAL^PERSON", "TRAUMA4")) == "AA"

    def corrected() -> bool:
        return all(dcmread(path, stop_before_pixels=True).PatientID == "REAL4" for _, path, _ in stored(proc))

    wait_for(corrected)
    for _, path, _ in stored(proc):
        ds = dcmread(path)
        assert str(ds.PatientName) == "REAL^PERSON"
        reasons = [i.ReasonForTheAttributeModification for i in ds.OriginalAttributesSequence]
        assert reasons == ["COERCE", "CORRECT"]  # the order's values on receipt, then the merge
        assert ds.OriginalAttributesSequence[1].ModifiedAttributesSequence[0].PatientID == "TRAUMA4"
