"""Forwarding stored images with C-STORE: DCMTK storescu → ``radbridge run`` → DCMTK storescp.

The peer's own files and log are the evidence: what it received (PixelData
byte for byte, transfer syntax), how many associations it saw, and what the
outbox rows say (SENT, ERROR with the reason, attempts).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import ROOT, EngineProcess, free_port, need
from tests.dicom.conftest import DCMTK
from tests.dicom.store_peer import storescu
from tests.integration.conftest import sqlite_rows
from tests.integration.forward_peer import (
    all_sent,
    deliveries,
    start_forwarding_engine,
    storescp,
    wait_until,
)
from tests.pki import make_pki

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture(autouse=True)
def _dcmtk() -> None:
    need(DCMTK, "DCMTK (storescu, storescp) not installed")

MR_STUDY = "study_dcm4che_MR_DOE_J1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"  # JPEG lossless, first-order prediction (SV1)


def _files(corpus: Path) -> list[Path]:
    return sorted((corpus / "dicom" / MR_STUDY).glob("*.dcm"))


def test_a_stored_study_is_forwarded_byte_identical_on_one_association(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    files = _files(corpus)
    with storescp(tmp_path) as peer:
        port = start_forwarding_engine(engine_process, peer.port)
        sent = storescu(port, files)
        assert sent.returncode == 0, sent.stderr
        wait_until(all_sent(engine_process, len(files)), what="every instance SENT")
        received = peer.received()
        for path in files:
            original = dcmread(path)
            assert received[str(original.SOPInstanceUID)].PixelData == original.PixelData
        assert len(received) == len(files)
        assert peer.associations() == 1  # one association carried the whole study
    study = {r[5] for r in deliveries(engine_process)}
    assert study == {str(dcmread(files[0]).StudyInstanceUID)}  # ordering key: the study


def test_a_peer_that_is_down_gets_the_images_when_it_comes_up(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    files = _files(corpus)[:3]
    peer_port = free_port()
    port = start_forwarding_engine(engine_process, peer_port)
    assert storescu(port, files).returncode == 0
    wait_until(lambda: all(r[2] >= 2 for r in deliveries(engine_process)[:1]), what="failed attempts")
    first = deliveries(engine_process)[0]
    assert first[1] == "QUEUED" and "no association" in first[3]
    with storescp(tmp_path, port=peer_port) as peer:
        wait_until(all_sent(engine_process, len(files)), what="delivery after the peer came up")
        assert len(peer.received()) == len(files)


def test_a_refused_compressed_syntax_is_a_dead_letter_until_replayed(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    """storescp's default accepts uncompressed syntaxes only: JPEG lossless is refused, never decompressed."""
    ct = corpus / "dicom" / "single" / "CT_jpegls_dcm4che.dcm"
    with storescp(tmp_path) as peer:
        port = start_forwarding_engine(engine_process, peer.port)
        assert storescu(port, [ct], "-xs").returncode == 0  # -xs: sent (and stored) as JPEG lossless
        wait_until(lambda: deliveries(engine_process)[0][1] == "ERROR", what="dead letter")
        row = deliveries(engine_process)[0]
        assert row[2] == 1  # permanent: no retry
        assert "never decompresses" in row[3] and JPEG_LOSSLESS in row[3]
        assert peer.received() == {}
        peer_port = peer.port
    with storescp(tmp_path, "+xa", port=peer_port, name="accepting") as accepting:
        listed = engine_process.cli("outbox", "list", "--status", "ERROR")
        assert "never decompresses" in listed.stdout
        replayed = engine_process.cli("outbox", "replay", "--destination", "pacs")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        wait_until(all_sent(engine_process, 1), what="delivery after replay")
        (got,) = accepting.received().values()
        assert got.file_meta.TransferSyntaxUID == JPEG_LOSSLESS
        assert got.PixelData == dcmread(ct).PixelData


def test_an_uncompressed_instance_is_converted_only_when_its_syntax_is_refused(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    mr = corpus / "dicom" / "single" / "MR_small.dcm"  # explicit VR little endian
    with storescp(tmp_path, "+xi") as peer:  # implicit VR little endian only
        port = start_forwarding_engine(engine_process, peer.port)
        assert storescu(port, [mr]).returncode == 0
        wait_until(all_sent(engine_process, 1), what="converted delivery")
        (got,) = peer.received().values()
    assert got.file_meta.TransferSyntaxUID == IMPLICIT
    assert got.PixelData == dcmread(mr).PixelData


def test_without_a_pacs_host_nothing_is_queued_and_the_log_says_so(tmp_path: Path, corpus: Path) -> None:
    """The shipped configuration with RADBRIDGE_PACS_HOST unset: images are stored, not forwarded."""
    data, port = tmp_path / "var", free_port()
    data.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RADBRIDGE_DATA_DIR": str(data), "RADBRIDGE_DICOM_PORT": str(port),
           "RADBRIDGE_MLLP_PORT": str(free_port())}
    env.pop("RADBRIDGE_PACS_HOST", None)
    engine = EngineProcess(ROOT / "config", data, env)
    engine.start(wait_port=port)
    try:
        assert storescu(port, [corpus / "dicom" / "single" / "MR_small.dcm"]).returncode == 0
        assert sqlite_rows(data / "radbridge.db", "SELECT count(*) FROM instances") == [(1,)]
        assert deliveries(engine) == []
        assert "DICOM destination pacs is off: no host (RADBRIDGE_PACS_HOST unset" in engine.log()
    finally:
        engine.stop()


def test_forwarding_over_mutual_tls(engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    """storescp requires a client certificate; radbridge presents one and verifies the server's."""
    pki = make_pki(tmp_path / "pki")
    files = _files(corpus)[:4]
    tls = (f"    tls:\n      ca_file: {pki / 'ca.pem'}\n      cert_file: {pki / 'client.pem'}\n"
           f"      key_file: {pki / 'client.key'}\n      server_hostname: localhost\n")
    with storescp(tmp_path, "+tls", str(pki / "server.key"), str(pki / "server.pem"), "+cf",
                  str(pki / "ca.pem")) as peer:
        port = start_forwarding_engine(engine_process, peer.port, extra=tls)
        assert storescu(port, files).returncode == 0
        wait_until(all_sent(engine_process, len(files)), what="delivery over TLS")
        received = peer.received()
        assert {str(dcmread(p).SOPInstanceUID) for p in files} == set(received)
        assert peer.associations() == 1
