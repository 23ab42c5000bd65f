"""The scheduled workflow end to end, with peers nobody here wrote.

python-hl7's MLLP client sends orders and ADT to a running engine; DCMTK
``findscu -W`` (and pynetdicom as a second client) read the worklist back;
pynetdicom sends MPPS; a recording MLLP peer plays the RIS that receives the
status messages through the outbox.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep, ModalityWorklistInformationFind

from tests.conftest import ROOT, EngineProcess, free_port, need, wait_for_port

pytestmark = pytest.mark.slow

RETURN_KEYS = [
    "PatientName=", "PatientID=", "AccessionNumber=", "StudyInstanceUID=", "RequestedProcedureID=",
    "ScheduledProcedureStepSequence[0].Modality=",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID=",
]  # fmt: skip


def orm(n: int, pid: str = "MRN100", name: str = "PARKER^ANN", control: str = "NW", status: str = "SC",
        modality: str = "CT", cid: str = "", code: str = "CTHEAD^CT head^L") -> str:
    obr = f"OBR|1|PL{n}|FL{n}|{code}" + "|" * 14 + f"ACC{n}|RP{n}|SPS{n}" + "|" * 4 + modality
    return "\r".join([
        f"MSH|^~\\&|RIS|NORTH|RADBRIDGE|NORTH|20261122080000||ORM^O01|{cid or f'O{n}{control}'}|P|2.3.1",
        f"PID|1||{pid}^^^NORTH^MR||{name}||19800202|F",
        "PV1|1|O|RAD||||1234^REFER^DOC",
        f"ORC|{control}|PL{n}|FL{n}||{status}||^^^20261122093000^^R",
        obr,
        f"ZDS|1.2.826.0.1.3680043.10.999.{n}^RADBRIDGE^Application^DICOM",
    ]) + "\r"  # fmt: skip


def omi(n: int) -> str:
    return "\r".join([
        f"MSH|^~\\&|RIS|NORTH|RADBRIDGE|NORTH|20261122080000||OMI^O23^OMI_O23|I{n}|P|2.5.1||||||UNICODE UTF-8",
        "PID|1||MRN200^^^NORTH^MR||M\u00dcLLER^J\u00d6RG||19700101|M",
        f"ORC|NW|PL{n}|FL{n}||SC",
        "TQ1|1||||||20261122141500|||S",
        f"OBR|1|PL{n}|FL{n}|MRKNEE^MR knee^L",
        f"IPC|ACC{n}|RP{n}|1.2.826.0.1.3680043.10.999.{n}|SPS{n}|MR|||ROOM 7|MR_A\\MR_B",
    ]) + "\r"  # fmt: skip


def adt(event: str, pid: str, name: str, mrg: str = "") -> str:
    segs = [f"MSH|^~\\&|HIS|NORTH|RADBRIDGE|NORTH|20261122090000||ADT^{event}|A{event}{pid}{mrg}|P|2.5",
            f"EVN|{event}|20261122090000", f"PID|1||{pid}^^^NORTH^MR||{name}||19800202|F"]
    if mrg:
        segs.append(f"MRG|{mrg}^^^NORTH^MR")
    return "\r".join(segs) + "\r"


async def _send_all(port: int, messages: list[str]) -> list[str]:
    reader, writer = await open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    codes = []
    try:
        for text in messages:
            writer.writemessage(hl7.parse(text))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readmessage(), 20)
            codes.append(str(ack.segment("MSA")[1]))
    finally:
        writer.close()
    return codes


def send(port: int, *messages: str) -> list[str]:
    return asyncio.run(_send_all(port, list(messages)))


class RecordingRIS:
    """An MLLP peer (python-hl7's server) that records what it receives and answers AA."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(str(message))
                writer.writemessage(message.create_ack())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def start(self) -> None:
        self._thread.start()
        server = hl7.mllp.start_hl7_server(self._handle, "127.0.0.1", self.port)
        self._server = asyncio.run_coroutine_threadsafe(server, self._loop).result(10)
        wait_for_port(self.port)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Stop listening and end the open connections' handlers (they close their sockets)."""
        self._server.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


@pytest.fixture
def ris() -> Iterator[RecordingRIS]:
    peer = RecordingRIS()
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def workflow(engine_process: EngineProcess, ris: RecordingRIS) -> Iterator[tuple[EngineProcess, int, int]]:
    need(shutil.which("findscu") is not None, "DCMTK findscu not installed")
    mllp, dicom = free_port(), free_port()
    (engine_process.config_dir / "engine.yaml").write_text(f"""
data_dir: {engine_process.data_dir}
mappings_dir: {ROOT / 'mappings'}
dicom: {{port: {dicom}}}
outbox: {{poll_interval_seconds: 0.2}}
mpps: {{status_destination: ris}}
destinations:
  - {{name: ris, type: mllp, host: 127.0.0.1, port: {ris.port}, ordering_key: accession_number,
     retry: {{initial_seconds: 0.2, max_seconds: 1}}}}
""")
    (engine_process.config_dir / "channels" / "ris.yaml").write_text(f"""
name: ris-inbound
source: {{type: mllp, port: {mllp}}}
accept: {{message_types: ["ADT^*", "ORM^O01", "OMI^O23", "OMG^O19"]}}
mapping: [adt-to-patient, order-to-worklist]
handlers: [patients, orders]
""")
    engine_process.start(wait_port=mllp)
    wait_for_port(dicom, proc=engine_process.proc)
    yield engine_process, mllp, dicom


def findscu(port: int, out: Path, *keys: str) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = ["findscu", "-W", "-aet", "CT_SCANNER_1", "-aec", "RADBRIDGE", "-X", "-od", str(out), "127.0.0.1", str(port)]
    for key in keys:
        args += ["-k", key]
    subprocess.run(args, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True,
                   timeout=60)
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def pynetdicom_find(port: int, query: Dataset) -> list[Dataset]:
    ae = AE(ae_title="MR_A")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        return [ds for status, ds in assoc.send_c_find(query, ModalityWorklistInformationFind)
                if status and status.Status in (0xFF00, 0xFF01)]
    finally:
        assoc.release()


def summary(ds: Dataset) -> dict[str, str]:
    sps = ds.ScheduledProcedureStepSequence[0]
    return {
        "AccessionNumber": ds.AccessionNumber, "PatientName": str(ds.PatientName), "PatientID": ds.PatientID,
        "StudyInstanceUID": ds.StudyInstanceUID, "RequestedProcedureID": ds.RequestedProcedureID,
        "ScheduledProcedureStepID": sps.ScheduledProcedureStepID, "Modality": sps.Modality,
        "ScheduledStationAETitle": "\\".join(sps.ScheduledStationAETitle)
        if sps["ScheduledStationAETitle"].VM > 1 else str(sps.ScheduledStationAETitle),
        "Start": f"{sps.ScheduledProcedureStepStartDate}{sps.ScheduledProcedureStepStartTime}",
    }  # fmt: skip


def by_accession(port: int, tmp: Path, accession: str) -> list[dict[str, str]]:
    return [summary(ds) for ds in findscu(port, tmp, *RETURN_KEYS[:2], *RETURN_KEYS[3:],
                                          f"AccessionNumber={accession}")]


def test_orders_sent_over_mllp_are_what_findscu_reads_back(workflow, tmp_path):
    _, mllp, dicom = workflow
    assert send(mllp, orm(1), omi(2)) == ["AA", "AA"]
    assert by_accession(dicom, tmp_path / "a", "ACC1") == [{
        "AccessionNumber": "ACC1", "PatientName": "PARKER^ANN", "PatientID": "MRN100",
        "StudyInstanceUID": "1.2.826.0.1.3680043.10.999.1", "RequestedProcedureID": "RP1",
        "ScheduledProcedureStepID": "SPS1", "Modality": "CT", "ScheduledStationAETitle": "CT_SCANNER_1",
        "Start": "20261122093000"}]  # fmt: skip
    second = by_accession(dicom, tmp_path / "b", "ACC2")
    assert second == [{
        "AccessionNumber": "ACC2", "PatientName": "M\u00dcLLER^J\u00d6RG", "PatientID": "MRN200",
        "StudyInstanceUID": "1.2.826.0.1.3680043.10.999.2", "RequestedProcedureID": "RP2",
        "ScheduledProcedureStepID": "SPS2", "Modality": "MR", "ScheduledStationAETitle": "MR_A\\MR_B",
        "Start": "20261122141500"}]  # fmt: skip


def test_a_second_client_sees_the_same_worklist_by_station(workflow):
    _, mllp, dicom = workflow
    send(mllp, orm(1), omi(2))
    query = Dataset()
    query.PatientName = ""
    query.AccessionNumber = ""
    item = Dataset()
    item.ScheduledStationAETitle = "MR_B"
    item.ScheduledProcedureStepStartDate = "20261122"
    query.ScheduledProcedureStepSequence = [item]
    found = pynetdicom_find(dicom, query)
    assert [(ds.AccessionNumber, str(ds.PatientName)) for ds in found] == [("ACC2", "M\u00dcLLER^J\u00d6RG")]


def test_merge_then_name_change_show_in_the_next_query(workflow, tmp_path):
    _, mllp, dicom = workflow
    assert send(mllp, orm(3, pid="TRAUMA7", name="UNKNOWN^TRAUMA")) == ["AA"]
    assert send(mllp, adt("A04", "REAL9", "REAL^PERSON"), adt("A40", "REAL9", "REAL^PERSON", mrg="TRAUMA7")) == [
        "AA", "AA"]  # fmt: skip
    (entry,) = by_accession(dicom, tmp_path / "m", "ACC3")
    assert (entry["PatientID"], entry["PatientName"]) == ("REAL9", "REAL^PERSON")
    assert send(mllp, adt("A08", "REAL9", "RENAMED^PERSON")) == ["AA"]
    (entry,) = by_accession(dicom, tmp_path / "n", "ACC3")
    assert entry["PatientName"] == "RENAMED^PERSON"


def test_change_updates_in_place_and_cancel_removes(workflow, tmp_path):
    _, mllp, dicom = workflow
    send(mllp, orm(4))
    assert send(mllp, orm(4, control="XO", status="SC", modality="MR", code="MRKNEE^MR knee^L")) == ["AA"]
    (entry,) = by_accession(dicom, tmp_path / "x", "ACC4")
    assert entry["Modality"] == "MR"
    assert send(mllp, orm(4, control="CA", status="CA")) == ["AA"]
    assert by_accession(dicom, tmp_path / "c", "ACC4") == []


def test_unknown_order_control_is_rejected_at_orc_1(workflow):
    _, mllp, _ = workflow
    reply = asyncio.run(_raw_ack(mllp, orm(5, control="ZZ", status="SC")))
    assert "MSA|AE" in reply and "ORC^1^1" in reply


async def _raw_ack(port: int, text: str) -> str:
    reader, writer = await open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    writer.writemessage(hl7.parse(text))
    await writer.drain()
    ack = await asyncio.wait_for(reader.readmessage(), 20)
    writer.close()
    return str(ack)


def mpps(port: int, status: str, uid: str = "1.2.826.0.1.3680043.10.999.77") -> int:
    ae = AE(ae_title="CT_SCANNER_1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.PerformedProcedureStepStatus = status
        if status == "IN PROGRESS":
            ref = Dataset()
            ref.AccessionNumber = "ACC6"
            ref.ScheduledProcedureStepID = "SPS6"
            ref.StudyInstanceUID = "1.2.826.0.1.3680043.10.999.6"
            ds.ScheduledStepAttributesSequence = [ref]
            ds.PatientID = "MRN100"
            ds.Modality = "CT"
            ds.PerformedStationAETitle = "CT_SCANNER_1"
            ds.PerformedProcedureStepStartDate = "20261122"
            ds.PerformedProcedureStepStartTime = "094500"
            ds.PerformedProcedureStepID = "PPS6"
            status_ds, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        else:
            status_ds, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        return int(status_ds.Status)
    finally:
        assoc.release()


def wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout}s")
        time.sleep(0.1)


def test_mpps_transitions_reach_the_ris_once_each(workflow, ris, tmp_path):
    _, mllp, dicom = workflow
    send(mllp, orm(6))
    assert mpps(dicom, "IN PROGRESS") == 0
    wait_for(lambda: len(ris.received) >= 1)
    assert by_accession(dicom, tmp_path / "s", "ACC6") == []  # STARTED steps leave the worklist
    assert mpps(dicom, "COMPLETED") == 0
    assert mpps(dicom, "COMPLETED") == 0x0110  # final states are immutable
    wait_for(lambda: len(ris.received) >= 2)
    time.sleep(1.5)  # a duplicate would arrive within a few poll intervals
    statuses = [str(hl7.parse(m).segment("ORC")[5]) for m in ris.received]
    assert statuses == ["IP", "CM"]
    assert all(str(hl7.parse(m).segment("ORC")[1]) == "SC" for m in ris.received)


def adt_visit(event: str, pid: str, location: str, prior: str = "", n: int = 0) -> str:
    """An ADT message with a PV1 (class I, PV1-3 ``location``, PV1-6 ``prior``)."""
    return "\r".join([
        f"MSH|^~\\&|HIS|NORTH|RADBRIDGE|NORTH|20261122090000||ADT^{event}|V{event}{pid}{n}|P|2.5",
        f"EVN|{event}|20261122090000", f"PID|1||{pid}^^^NORTH^MR||VISIT^PAT||19800202|F",
        f"PV1|1|I|{location}|||{prior}",
    ]) + "\r"  # fmt: skip


def mpps_create(port: int, n: int, pid: str, uid: str) -> int:
    """N-CREATE IN PROGRESS for order ``n`` of ``orm``."""
    ae = AE(ae_title="CT_SCANNER_1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    ds, ref = Dataset(), Dataset()
    ref.AccessionNumber, ref.StudyInstanceUID = f"ACC{n}", f"1.2.826.0.1.3680043.10.999.{n}"
    ds.ScheduledStepAttributesSequence = [ref]
    ds.PatientID, ds.Modality, ds.PerformedProcedureStepStatus = pid, "CT", "IN PROGRESS"
    ds.PerformedProcedureStepID, ds.PerformedStationAETitle = f"PPS{n}", "CT_SCANNER_1"  # Type 1 (PS3.4 F.7.2-1)
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20261122", "094500"
    try:
        status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        return int(status.Status)
    finally:
        assoc.release()


def study_patients(engine: EngineProcess) -> dict[str, str]:
    """Study Instance UID → PatientID of its patient, read from the engine's SQLite file."""
    with sqlite3.connect(engine.data_dir / "radbridge.db") as conn:
        rows = conn.execute(
            "SELECT s.study_instance_uid, p.patient_id FROM studies s JOIN patients p ON p.id = s.patient_pk"
        ).fetchall()
    return dict(rows)


def test_pir_merge_of_two_trauma_ids_moves_worklist_and_studies(workflow, tmp_path):
    engine, mllp, dicom = workflow
    assert send(mllp, orm(7, pid="TRAUMA8", name="UNKNOWN^A"), orm(8, pid="TRAUMA9", name="UNKNOWN^B")) == [
        "AA", "AA"]  # fmt: skip
    assert mpps_create(dicom, 7, "TRAUMA8", "1.2.826.0.1.3680043.10.999.707") == 0
    assert study_patients(engine) == {"1.2.826.0.1.3680043.10.999.7": "TRAUMA8"}
    a40 = "\r".join([
        "MSH|^~\\&|HIS|NORTH|RADBRIDGE|NORTH|20261122090000||ADT^A40^ADT_A39|PIR1|P|2.5", "EVN|A40",
        "PID|1||REAL8^^^NORTH^MR||REAL^EIGHT||19800202|F", "MRG|TRAUMA8^^^NORTH^MR",
        "PID|2||REAL8^^^NORTH^MR||REAL^EIGHT||19800202|F", "MRG|TRAUMA9^^^NORTH^MR",
    ]) + "\r"  # fmt: skip
    assert send(mllp, a40) == ["AA"]
    assert study_patients(engine) == {"1.2.826.0.1.3680043.10.999.7": "REAL8"}
    (entry,) = by_accession(dicom, tmp_path / "m", "ACC8")
    assert (entry["PatientID"], entry["PatientName"]) == ("REAL8", "REAL^EIGHT")
    assert send(mllp, orm(9, pid="TRAUMA9")) == ["AE"]  # HL7 for a merged id: rejected by default


def test_transfer_and_its_cancel_show_as_current_patient_location(workflow, tmp_path):
    _, mllp, dicom = workflow
    send(mllp, orm(10, pid="VISIT1"))
    assert send(mllp, adt_visit("A01", "VISIT1", "W1^101"), adt_visit("A02", "VISIT1", "W2^202", prior="W1^101")) == [
        "AA", "AA"]  # fmt: skip
    keys = ("AccessionNumber=ACC10", "CurrentPatientLocation=")
    assert [d.CurrentPatientLocation for d in findscu(dicom, tmp_path / "t", *keys)] == ["W2^202"]
    assert send(mllp, adt_visit("A12", "VISIT1", "W1^101")) == ["AA"]
    assert [d.CurrentPatientLocation for d in findscu(dicom, tmp_path / "u", *keys)] == ["W1^101"]
    assert send(mllp, adt_visit("A03", "VISIT1", "W1^101"), adt_visit("A13", "VISIT1", "W3^303", n=1)) == [
        "AA", "AA"]  # fmt: skip
    assert [d.CurrentPatientLocation for d in findscu(dicom, tmp_path / "v", *keys)] == ["W3^303"]


def omi_steps(control: str = "NW", status: str = "SC", *, steps: tuple[str, ...] = ("CT", "MR"), cid: str = "") -> str:
    """An OMI^O23 for one requested procedure (ACC20) with one IPC per step: SPS20-CT, SPS20-MR ..."""
    stations = {"CT": "CT_SCANNER_1", "MR": "MR_A", "DX": "DX_1"}
    ipcs = [f"IPC|ACC20|RP20|1.2.826.0.1.3680043.10.999.20|SPS20-{m}|{m}|P-{m}^{m} protocol^L|||{stations[m]}"
            for m in steps]
    return "\r".join([
        f"MSH|^~\\&|RIS|NORTH|RADBRIDGE|NORTH|20261122080000||OMI^O23^OMI_O23|{cid or f'S20{control}'}|P|2.5.1",
        "PID|1||MRN300^^^NORTH^MR||STEPS^ANNA||19700101|F", f"ORC|{control}|PL20|FL20||{status}",
        "TQ1|1||||||20261122150000|||R", "OBR|1|PL20|FL20|CHEST^Chest CT and MR^L", *ipcs,
    ]) + "\r"  # fmt: skip


def steps_of_acc20(port: int, out: Path) -> list[tuple[str, str, str, str, str]]:
    found = findscu(port, out, "AccessionNumber=ACC20", "StudyInstanceUID=", "RequestedProcedureID=",
                    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID=",
                    "ScheduledProcedureStepSequence[0].Modality=",
                    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=")
    return sorted((ds.AccessionNumber, ds.StudyInstanceUID, ds.RequestedProcedureID,
                   ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID,
                   ds.ScheduledProcedureStepSequence[0].Modality) for ds in found)


def test_an_omi_with_two_ipcs_is_two_worklist_items_of_one_order(workflow, tmp_path):
    """RAD-4 OMI^O23: one requested procedure, an IPC per step: findscu reads one item per step, with the
    order's accession and Study Instance UID; MPPS by SPS ID starts only its own step; an XO that drops the
    other (not started) step discontinues it; a cancel ends the rest."""
    _, mllp, dicom = workflow
    assert send(mllp, omi_steps()) == ["AA"]
    uid = "1.2.826.0.1.3680043.10.999.20"
    assert steps_of_acc20(dicom, tmp_path / "a") == [("ACC20", uid, "RP20", "SPS20-CT", "CT"),
                                                      ("ACC20", uid, "RP20", "SPS20-MR", "MR")]

    ae = AE(ae_title="MR_A")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", dicom, ae_title="RADBRIDGE")
    assert assoc.is_established
    ds, ref = Dataset(), Dataset()
    ref.AccessionNumber, ref.StudyInstanceUID, ref.ScheduledProcedureStepID = "ACC20", uid, "SPS20-MR"
    ds.ScheduledStepAttributesSequence = [ref]
    ds.PatientID, ds.Modality, ds.PerformedProcedureStepStatus = "MRN300", "MR", "IN PROGRESS"
    ds.PerformedProcedureStepID, ds.PerformedStationAETitle = "PPS20", "MR_A"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20261122", "150500"
    try:
        status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, "1.2.826.0.1.3680043.10.999.2001")
    finally:
        assoc.release()
    assert int(status.Status) == 0
    assert steps_of_acc20(dicom, tmp_path / "b") == [("ACC20", uid, "RP20", "SPS20-CT", "CT")]  # MR started

    assert send(mllp, omi_steps("XO", steps=("DX",))) == ["AA"]  # CT not started: discontinued; MR kept
    assert steps_of_acc20(dicom, tmp_path / "c") == [("ACC20", uid, "RP20", "SPS20-DX", "DX")]

    assert send(mllp, omi_steps("CA", "CA", steps=())) == ["AA"]
    assert steps_of_acc20(dicom, tmp_path / "d") == []


def step_mpps(port: int, modality: str, status: str, uid: str) -> int:
    """One MPPS of the ACC20 order's ``modality`` step: N-CREATE IN PROGRESS, or N-SET to ``status``."""
    ae = AE(ae_title=f"{modality}_A")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    try:
        if status != "IN PROGRESS":
            return int(assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)[0].Status)
        ref = Dataset()
        ref.AccessionNumber, ref.StudyInstanceUID = "ACC20", "1.2.826.0.1.3680043.10.999.20"
        ref.ScheduledProcedureStepID = f"SPS20-{modality}"
        ds.ScheduledStepAttributesSequence = [ref]
        ds.PatientID, ds.Modality, ds.PerformedStationAETitle = "MRN300", modality, f"{modality}_A"
        ds.PerformedProcedureStepID = f"PPS20-{modality}"
        ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20261122", "150500"
        return int(assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)[0].Status)
    finally:
        assoc.release()


def test_a_multi_step_order_is_reported_complete_to_the_ris_only_when_its_last_step_is(workflow, ris):
    """ORC-5 is the order's status (table 0038): the MR step's MPPS COMPLETED leaves the order IP while its CT
    step is still scheduled (IPC-4 names the step each message is about); the CT's completion makes it CM.
    Before, the first step's completion sent ORC-5 CM and a RIS closed the whole procedure early."""
    _, mllp, dicom = workflow
    assert send(mllp, omi_steps(cid="MSTEP1")) == ["AA"]
    mr, ct = "1.2.826.0.1.3680043.10.999.2101", "1.2.826.0.1.3680043.10.999.2102"
    assert step_mpps(dicom, "MR", "IN PROGRESS", mr) == 0
    assert step_mpps(dicom, "MR", "COMPLETED", mr) == 0
    assert step_mpps(dicom, "CT", "IN PROGRESS", ct) == 0
    assert step_mpps(dicom, "CT", "COMPLETED", ct) == 0
    wait_for(lambda: len(ris.received) >= 4)

    def said(message: str) -> tuple[str, str, str]:
        parsed = hl7.parse(message)
        return (str(parsed.segment("ORC")[1]), str(parsed.segment("ORC")[5]), str(parsed.segment("OBR")[20]))

    assert [said(m) for m in ris.received] == [
        ("SC", "IP", "SPS20-MR"), ("SC", "IP", "SPS20-MR"), ("SC", "IP", "SPS20-CT"), ("SC", "CM", "SPS20-CT")]
