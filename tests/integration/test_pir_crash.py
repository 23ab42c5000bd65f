"""PIR on the wire: kill -9 in the middle of a correction (completed exactly once after the restart), and
``on_correction: hl7`` (an ADT to a real MLLP peer instead of the images)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import ROOT, EngineProcess, free_port, need, wait_for_port
from tests.dicom.conftest import DCMTK
from tests.integration.conftest import sqlite_rows
from tests.integration.forward_peer import storescp, wait_until
from tests.integration.mllp_peer import MLLPPeer
from tests.integration.test_pir_orthanc import adt_a08
from tests.integration.test_reconcile_e2e import adt_a40, orm, send, storescu

pytestmark = pytest.mark.slow
COUNT = 120


def _study(corpus: Path, out: Path) -> list[Path]:
    """COUNT instances of one series, taken from one corpus image under new SOP Instance UIDs."""
    src = sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[0]
    files = []
    for n in range(COUNT):
        ds = dcmread(src)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.InstanceNumber = "583295", n + 1
        files.append(out / f"{n:04}.dcm")
        ds.save_as(files[-1])
    return files


def _rows(engine: EngineProcess, sql: str) -> list[tuple[object, ...]]:
    return sqlite_rows(engine.data_dir / "radbridge.db", sql)


@pytest.mark.timeout(600)
def test_a_correction_killed_midway_completes_exactly_once_after_restart(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    need(DCMTK, "DCMTK not installed")
    (tmp_path / "src").mkdir()
    files = _study(corpus, tmp_path / "src")
    mllp, dicom = free_port(), free_port()
    with storescp(tmp_path) as pacs:
        (engine_process.config_dir / "engine.yaml").write_text(f"""
data_dir: {engine_process.data_dir}
mappings_dir: {ROOT / 'mappings'}
dicom: {{port: {dicom}}}
reconcile: {{poll_interval_seconds: 0.2}}
outbox: {{poll_interval_seconds: 0.2}}
destinations:
  - {{name: pacs, type: dicom, host: 127.0.0.1, port: {pacs.port}, called_ae_title: STORESCP}}
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
        assert send(mllp, orm(1, "583295", "MOF5026", name="DOE^JOHN")) == "AA"
        storescu(dicom, files)
        wait_until(lambda: _rows(engine_process, "SELECT count(*) FROM outbox WHERE status = 'SENT'")[0][0]
                   == COUNT, timeout=300, what="the images forwarded")
        archive = engine_process.data_dir / "archive"
        assert send(mllp, adt_a08("583295", "DOE^JONATHAN")) == "AA"
        # kill -9 once corrected files are being written, before the whole correction is indexed (it is
        # indexed in batches: some instances may already point at their new files, the rest must not)
        originals = {Path(str(p)).name for (p,) in _rows(engine_process, "SELECT path FROM instances")}
        deadline = time.monotonic() + 60
        while not any(p.name not in originals for p in archive.rglob("*.dcm")):
            assert time.monotonic() < deadline, "no corrected file written"
            time.sleep(0.02)
        assert engine_process.proc is not None
        os.kill(engine_process.proc.pid, signal.SIGKILL)
        engine_process.proc.wait(timeout=30)
        interrupted = _rows(engine_process, "SELECT min(versions) FROM instances")[0][0] == 1
        assert _rows(engine_process, "SELECT count(*) FROM reconcile_requests")[0][0] == 1
        engine_process.proc = None
        engine_process.start(wait_port=mllp)
        wait_until(lambda: _rows(engine_process, "SELECT count(*) FROM reconcile_requests")[0][0] == 0,
                   timeout=300, what="the correction done after the restart")
        wait_until(lambda: _rows(engine_process, "SELECT count(*) FROM outbox WHERE status = 'SENT'")[0][0]
                   >= 2 * COUNT, timeout=300, what="the corrected images resent")
        assert interrupted, "the kill came after the whole correction was indexed: nothing was interrupted"
        assert _rows(engine_process, "SELECT count(*) FROM outbox")[0][0] == 2 * COUNT  # each resent once
        assert {r[0] for r in _rows(engine_process, "SELECT versions FROM instances")} == {2}
        for (path,) in _rows(engine_process, "SELECT path FROM instances"):
            ds = dcmread(archive / str(path), stop_before_pixels=True)
            assert str(ds.PatientName) == "DOE^JONATHAN"
            assert [i.ReasonForTheAttributeModification for i in ds.OriginalAttributesSequence] == [
                "COERCE", "CORRECT"]
        wait_until(lambda: all(str(ds.PatientName) == "DOE^JONATHAN" for ds in pacs.received().values()),
                   timeout=120, what="the peer's copies corrected")


@pytest.mark.timeout(600)
def test_on_correction_hl7_sends_an_a40_over_mllp_instead_of_the_images(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    need(DCMTK, "DCMTK not installed")
    files = sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[:2]
    mllp, dicom = free_port(), free_port()
    adt_peer = MLLPPeer(free_port())
    adt_peer.up()
    try:
        with storescp(tmp_path) as pacs:
            (engine_process.config_dir / "engine.yaml").write_text(f"""
data_dir: {engine_process.data_dir}
mappings_dir: {ROOT / 'mappings'}
dicom: {{port: {dicom}}}
reconcile: {{poll_interval_seconds: 0.2}}
outbox: {{poll_interval_seconds: 0.2}}
destinations:
  - {{name: pacs-adt, type: mllp, host: 127.0.0.1, port: {adt_peer.port}}}
  - {{name: pacs, type: dicom, host: 127.0.0.1, port: {pacs.port}, called_ae_title: STORESCP,
      on_correction: hl7, correction_hl7_destination: pacs-adt}}
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
            assert send(mllp, orm(1, "583295", "MOF5026", name="DOE^JOHN")) == "AA"
            storescu(dicom, files)
            wait_until(lambda: len(pacs.received()) == len(files), timeout=120, what="the images forwarded")
            assert send(mllp, adt_a40("REAL4", "REAL^PERSON", "583295")) == "AA"
            (got,) = adt_peer.wait_for(1, timeout=120)
            segments = got.payload.decode().split("\r")
            assert "|ADT^A40^ADT_A39|" in segments[0]
            assert segments[2].startswith("PID|1||REAL4^^^NORTH||REAL^PERSON||19500505|F")
            assert segments[3] == "MRG|583295^^^NORTH"
            time.sleep(1.0)  # nothing else follows: no resend of the images, no second ADT
            assert len(adt_peer.messages()) == 1
            assert _rows(engine_process, "SELECT count(*) FROM outbox WHERE destination = 'pacs'")[0][0] == len(files)
    finally:
        adt_peer.close()


def _adt_a47(new: str, prior: str) -> str:
    return "\r".join([
        "MSH|^~\\&|HIS|NORTH|RADBRIDGE|NORTH|20261205120000||ADT^A47^ADT_A30|M47|P|2.5.1",
        "EVN|A47|20261205120000",
        f"PID|1||{new}^^^NORTH^MR||DOE^JOHN||19500505|F",
        f"MRG|{prior}^^^NORTH^MR",
    ]) + "\r"  # fmt: skip


def _hl7_engine(engine_process: EngineProcess, pacs_port: int, adt_port: int, reconcile: str) -> tuple[int, int]:
    """``radbridge run``: a DICOM destination whose corrections go as HL7 ADTs to the MLLP peer."""
    mllp, dicom = free_port(), free_port()
    (engine_process.config_dir / "engine.yaml").write_text(f"""
data_dir: {engine_process.data_dir}
mappings_dir: {ROOT / 'mappings'}
dicom: {{port: {dicom}}}
reconcile: {{poll_interval_seconds: 0.2{reconcile}}}
outbox: {{poll_interval_seconds: 0.2}}
destinations:
  - {{name: pacs-adt, type: mllp, host: 127.0.0.1, port: {adt_port}}}
  - {{name: pacs, type: dicom, host: 127.0.0.1, port: {pacs_port}, called_ae_title: STORESCP,
      on_correction: hl7, correction_hl7_destination: pacs-adt}}
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
    return mllp, dicom


@pytest.mark.timeout(600)
def test_on_correction_hl7_sends_an_a47_over_mllp_after_an_identifier_change(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    need(DCMTK, "DCMTK not installed")
    files = sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[:2]
    adt_peer = MLLPPeer(free_port())
    adt_peer.up()
    try:
        with storescp(tmp_path) as pacs:
            mllp, dicom = _hl7_engine(engine_process, pacs.port, adt_peer.port, "")
            assert send(mllp, orm(1, "583295", "MOF5026", name="DOE^JOHN")) == "AA"
            storescu(dicom, files)
            wait_until(lambda: len(pacs.received()) == len(files), timeout=120, what="the images forwarded")
            assert send(mllp, _adt_a47("NEW47", "583295")) == "AA"
            (got,) = adt_peer.wait_for(1, timeout=120)
            segments = got.payload.decode().split("\r")
            assert "|ADT^A47^ADT_A30|" in segments[0]
            assert segments[2].startswith("PID|1||NEW47^^^NORTH||DOE^JOHN||19500505|F")
            assert segments[3] == "MRG|583295^^^NORTH"
    finally:
        adt_peer.close()


@pytest.mark.timeout(600)
def test_a_correction_killed_between_batches_sends_its_adt_once(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    """kill -9 after the first batches were indexed (their ADT queued, perhaps delivered): the restart
    finishes the correction and the PACS still gets one ADT."""
    need(DCMTK, "DCMTK not installed")
    (tmp_path / "src").mkdir()
    files = _study(corpus, tmp_path / "src")[:40]
    adt_peer = MLLPPeer(free_port())
    adt_peer.up()
    try:
        with storescp(tmp_path) as pacs:
            pace = ", correction_batch: 2, correction_yield_ratio: 4"
            mllp, dicom = _hl7_engine(engine_process, pacs.port, adt_peer.port, pace)
            assert send(mllp, orm(1, "583295", "MOF5026", name="DOE^JOHN")) == "AA"
            storescu(dicom, files)
            wait_until(lambda: len(pacs.received()) == len(files), timeout=300, what="the images forwarded")
            assert send(mllp, adt_a08("583295", "DOE^JONATHAN")) == "AA"
            versions = "SELECT count(*) FROM instances WHERE versions = 2"
            wait_until(lambda: _rows(engine_process, versions)[0][0] >= 4, timeout=120, what="two batches indexed")
            assert engine_process.proc is not None
            os.kill(engine_process.proc.pid, signal.SIGKILL)
            engine_process.proc.wait(timeout=30)
            assert _rows(engine_process, versions)[0][0] < len(files), "the correction was not interrupted"
            engine_process.proc = None
            engine_process.start(wait_port=mllp)
            wait_until(lambda: _rows(engine_process, "SELECT count(*) FROM reconcile_requests")[0][0] == 0,
                       timeout=300, what="the correction done after the restart")
            assert _rows(engine_process, versions)[0][0] == len(files)
            adt_peer.wait_for(1, timeout=120)
            time.sleep(2.0)  # a second ADT, if one were queued, would arrive meanwhile
            # One ADT was queued. The kill may land after the peer took it and before the engine recorded
            # its ACK: then the same message (same MSH-10) comes again, which the peer can recognise.
            # A second, different ADT would be a defect.
            got = adt_peer.messages()
            assert {m.payload.decode().split("\r")[0].split("|")[9] for m in got} == {
                got[0].payload.decode().split("\r")[0].split("|")[9]}, "two different ADTs were sent"
            assert all("|ADT^A08^ADT_A01|" in m.payload.decode() for m in got)
            assert len(got) <= 2
            assert _rows(engine_process, "SELECT count(*) FROM outbox WHERE destination = 'pacs-adt'")[0][0] == 1
    finally:
        adt_peer.close()
