"""The streamed C-FIND response path (channels.dicom.dul_stream) against pynetdicom's own path.

Real SCP, real SCUs: the same responses in the same order, PDUs within the SCU's maximum
length, C-CANCEL mid-stream, Implicit and Explicit VR Little Endian, TLS, and pynetdicom's
path kept for Big Endian.
"""

from __future__ import annotations

import logging
import ssl
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from bench.bench_worklist import populate
from channels.dicom import dul_stream, server
from channels.dicom.server import DicomServer, start_dicom_server
from engine.store.database import Database
from tests.pki import make_pki

from .conftest import dcmtk_env, make_config, needs_dcmtk

MWL = "1.2.840.10008.5.1.4.31"
STEPS = 500  # 5 a day
MAX_MATCHES = 100_000


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path = tmp_path_factory.mktemp("stream") / "rb.db"
    db = Database(f"sqlite:///{path}", sqlite_synchronous="NORMAL")
    db.migrate()
    populate(db, STEPS, date.today())
    yield db
    db.close()


def _start(tmp_path: Path, db: Database, **dicom: Any) -> DicomServer:
    config = make_config(tmp_path, worklist={"max_matches": MAX_MATCHES},
                         dicom={"port": 0, "ae_title": "RADBRIDGE", **dicom})  # fmt: skip
    return start_dicom_server(config, db)


@pytest.fixture
def scp(tmp_path: Path, database: Database) -> Iterator[DicomServer]:
    srv = _start(tmp_path, database)
    yield srv
    srv.stop()


@pytest.fixture
def pynetdicom_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answer with pynetdicom's own response path."""
    monkeypatch.setattr(server, "response_stream", lambda event: None)


def _query(date_range: str = "") -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.AccessionNumber, ds.StudyInstanceUID = "", "", "", ""
    sps = Dataset()
    sps.Modality, sps.ScheduledStationAETitle, sps.ScheduledProcedureStepID = "", "", ""
    sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime = date_range, ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


class Scu:
    """A pynetdicom worklist SCU that records the P-DATA-TF PDU lengths it receives."""

    def __init__(self, syntax: str = ImplicitVRLittleEndian, max_pdu: int = 16382, tls: Any = None) -> None:
        self.ae = AE(ae_title="CT1")
        self.ae.add_requested_context(MWL, [syntax])
        self.max_pdu = max_pdu
        self.tls = tls
        self.pdu_lengths: list[int] = []

    def _on_pdu(self, event: Any) -> None:
        if event.pdu.__class__.__name__ == "P_DATA_TF":
            self.pdu_lengths.append(len(event.pdu.encode()) - 6)

    def find(self, port: int, query: Dataset, cancel_after: int | None = None) -> list[tuple[int, Dataset | None]]:
        kwargs = {"tls_args": (self.tls, None)} if self.tls else {}
        assoc = self.ae.associate("127.0.0.1", port, ae_title="RADBRIDGE", max_pdu=self.max_pdu,
                                  evt_handlers=[(evt.EVT_PDU_RECV, self._on_pdu)], **kwargs)  # fmt: skip
        assert assoc.is_established
        out: list[tuple[int, Dataset | None]] = []
        try:
            for status, ds in assoc.send_c_find(query, MWL, msg_id=5):
                out.append((int(status.Status), ds))
                if len(out) == cancel_after:
                    assoc.send_c_cancel(5, assoc.accepted_contexts[0].context_id)
        finally:
            assoc.release()
        return out


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_many_responses_equal_pynetdicoms_path(
    scp: DicomServer, syntax: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    streamed = Scu(syntax).find(scp.port, _query())
    monkeypatch.setattr(server, "response_stream", lambda event: None)
    plain = Scu(syntax).find(scp.port, _query())
    assert len(streamed) == STEPS + 1
    assert [s for s, _ in streamed] == [0xFF00] * STEPS + [0x0000]
    assert streamed == plain


def test_the_stream_is_used_for_little_endian(scp: DicomServer, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _spy_streams(monkeypatch)
    Scu(ExplicitVRLittleEndian).find(scp.port, _query())
    Scu(ExplicitVRBigEndian).find(scp.port, _query())
    assert [type(m).__name__ for m in made] == ["ResponseStream", "NoneType"]


def _spy_streams(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    made: list[Any] = []

    def spy(event: Any) -> Any:
        made.append(dul_stream.response_stream(event))
        return made[-1]

    monkeypatch.setattr(server, "response_stream", spy)
    return made


def test_unknown_pynetdicom_versions_keep_pynetdicoms_path(scp: DicomServer, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = Scu().find(scp.port, _query())
    made = _spy_streams(monkeypatch)
    monkeypatch.setattr(dul_stream.pynetdicom, "__version__", "3.1.0")
    assert Scu().find(scp.port, _query()) == expected
    assert made == [None]


def test_pynetdicom_logging_at_info_keeps_pynetdicoms_path(scp: DicomServer, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _spy_streams(monkeypatch)
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        Scu().find(scp.port, _query())
    finally:
        logger.setLevel(level)
    assert made == [None]


def test_big_endian_keeps_pynetdicoms_path_with_the_same_answers(scp: DicomServer) -> None:
    assert Scu(ExplicitVRBigEndian).find(scp.port, _query()) == Scu().find(scp.port, _query())


@pytest.mark.parametrize("max_pdu", [128, 250])
def test_responses_larger_than_the_maximum_pdu_are_fragmented(
    scp: DicomServer, max_pdu: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    scu = Scu(max_pdu=max_pdu)
    streamed = scu.find(scp.port, _query())
    assert scu.pdu_lengths and max(scu.pdu_lengths) <= max_pdu
    monkeypatch.setattr(server, "response_stream", lambda event: None)
    assert streamed == Scu(max_pdu=max_pdu).find(scp.port, _query())


def test_cancel_mid_stream_ends_with_cancel_status(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'big.db'}", sqlite_synchronous="NORMAL")
    db.migrate()
    populate(db, 30_000, date.today())
    srv = _start(tmp_path, db)
    try:
        got = Scu().find(srv.port, _query(), cancel_after=1)
    finally:
        srv.stop()
        db.close()
    assert got[-1] == (0xFE00, None)
    assert 1 <= len(got) - 1 < 30_000
    assert {s for s, _ in got[:-1]} == {0xFF00}


def test_streamed_responses_over_tls(tmp_path: Path, database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path / "pki", leaves=("server",))
    srv = _start(tmp_path, database, tls={"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")})
    client = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    client.check_hostname = False
    try:
        streamed = Scu(tls=client).find(srv.port, _query())
        monkeypatch.setattr(server, "response_stream", lambda event: None)
        plain = Scu(tls=client).find(srv.port, _query())
    finally:
        srv.stop()
    assert len(streamed) == STEPS + 1
    assert streamed == plain


def _findscu(port: int, out: Path) -> list[Dataset]:
    out.mkdir()
    args = ["findscu", "-W", "-q", "-aet", "CT1", "-aec", "RADBRIDGE", "-X", "-od", str(out), "127.0.0.1", str(port),
            "-k", "PatientName=", "-k", "AccessionNumber=", "-k", "ScheduledProcedureStepSequence[0].Modality=",
            "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate="]  # fmt: skip
    subprocess.run(args, env=dcmtk_env(), check=True, capture_output=True, timeout=60)
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@needs_dcmtk
def test_findscu_gets_the_same_answers_from_both_paths(
    scp: DicomServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    streamed = _findscu(scp.port, tmp_path / "streamed")
    monkeypatch.setattr(server, "response_stream", lambda event: None)
    plain = _findscu(scp.port, tmp_path / "plain")
    assert len(streamed) == STEPS
    assert [d.AccessionNumber for d in streamed] == [d.AccessionNumber for d in plain]
    assert streamed == plain


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_a_refused_query_then_a_valid_one_on_the_same_association(scp: DicomServer) -> None:
    """Bad input gets a DIMSE failure status (C000), and the association goes on serving."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MWL, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        bad = [int(s.Status) for s, _ in assoc.send_c_find(_query("not-a-date"), MWL, msg_id=1)]
        good = [int(s.Status) for s, _ in assoc.send_c_find(_query(), MWL, msg_id=2)]
    finally:
        assoc.release()
    assert bad == [0xC000]
    assert good == [0xFF00] * STEPS + [0x0000]
