"""The shipped configuration forwards stored images to Orthanc: storescu → ``radbridge run`` → Orthanc.

Orthanc binds every interface and has no bind option, so these tests run in a
private network namespace (PEERS.md): outside one, the only test here re-runs
this module under ``unshare --net`` (loopback only) and reports its result.
Orthanc's REST API is the evidence: instance count, transfer syntax as stored,
PixelData byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.conftest import ROOT, EngineProcess, free_port, need, wait_for_port
from tests.dicom.conftest import DCMTK, dcmtk_env
from tests.dicom.store_peer import storescu
from tests.integration.conftest import sqlite_rows
from tests.integration.forward_peer import wait_until

_IN_NAMESPACE = "RADBRIDGE_TEST_IN_NETNS"

#: corpus file -> storescu option proposing its own transfer syntax (so radbridge stores it as is).
FILES = {
    "single/CT_jpegls_dcm4che.dcm": "-xs",  # JPEG lossless SV1
    "single/CR_RG3_J2KI.dcm": "-xw",  # JPEG 2000
    "single/US_multiframe_ybr_30f.dcm": "-xy",  # JPEG baseline
    "single/MR_small_implicit.dcm": "-xi",  # implicit VR little endian
}


if os.environ.get(_IN_NAMESPACE) != "1":

    @pytest.mark.timeout(900)
    def test_forwarding_to_orthanc_in_a_private_network_namespace(tmp_path: Path) -> None:
        need(shutil.which("Orthanc") is not None, "Orthanc not installed")
        need(shutil.which("unshare") is not None and DCMTK, "unshare or DCMTK not available")
        inner = (f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider"
                 f" --basetemp={tmp_path / 'inner'} {Path(__file__)}")
        done = subprocess.run(["unshare", "--net", "sh", "-c", inner], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, _IN_NAMESPACE: "1"}, timeout=880)
        assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
        assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


@dataclass
class Orthanc:
    """Orthanc (Debian package) with its index and storage under ``root``; restartable on the same ports."""

    root: Path
    dicom_port: int
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # more orthanc.json settings

    def start(self) -> None:
        config = {"Name": "PACS", "StorageDirectory": str(self.root), "IndexDirectory": str(self.root),
                  "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "PACS",
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True,
                  "DicomAlwaysAllowEcho": True, "DicomCheckCalledAet": True, "StableAge": 2, **self.options}
        (self.root / "orthanc.json").write_text(json.dumps(config))
        with open(self.root / "orthanc.log", "ab") as log:
            self.proc = subprocess.Popen(["Orthanc", str(self.root / "orthanc.json")], env=dcmtk_env(),
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.dicom_port, proc=self.proc, timeout=60)
        wait_for_port(self.http_port, proc=self.proc, timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)  # the next start needs the index unlocked
        self.proc = None

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as answer:
            return bytes(answer.read())

    def count(self) -> int:
        return int(json.loads(self.get("/statistics"))["CountInstances"])

    def instances(self) -> dict[str, Any]:
        """SOP Instance UID -> (dataset as Orthanc returns it, its TransferSyntax metadata)."""
        out = {}
        for ident in json.loads(self.get("/instances")):
            ds = dcmread(BytesIO(self.get(f"/instances/{ident}/file")))
            out[str(ds.SOPInstanceUID)] = (ds, self.get(f"/instances/{ident}/metadata/TransferSyntax").decode())
        return out


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    root = tmp_path / "orthanc"
    root.mkdir()
    peer = Orthanc(root, free_port(), free_port())
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def shipped(tmp_path: Path, orthanc: Orthanc) -> Iterator[tuple[EngineProcess, int]]:
    """``radbridge run`` on the shipped config/ directory, pointed at Orthanc by RADBRIDGE_PACS_*."""
    data, dicom_port = tmp_path / "var", free_port()
    data.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RADBRIDGE_DATA_DIR": str(data),
           "RADBRIDGE_DICOM_PORT": str(dicom_port), "RADBRIDGE_MLLP_PORT": str(free_port()),
           "RADBRIDGE_HTTP_PORT": str(free_port()), "RADBRIDGE_PACS_HOST": "127.0.0.1",
           "RADBRIDGE_PACS_PORT": str(orthanc.dicom_port), "RADBRIDGE_PACS_AET": "PACS"}
    engine = EngineProcess(ROOT / "config", data, env)
    engine.start(wait_port=dicom_port)
    try:
        yield engine, dicom_port
    finally:
        engine.stop()


def _send_corpus(port: int, corpus: Path) -> dict[str, Path]:
    """Store the MR study and the files of FILES in radbridge; SOP Instance UID -> source file."""
    study = sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))
    done = storescu(port, study)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, option in FILES.items():
        done = storescu(port, [corpus / "dicom" / name], option)
        assert done.returncode == 0, done.stderr[-2000:]
    sources = [*study, *(corpus / "dicom" / name for name in FILES)]
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in sources}


if os.environ.get(_IN_NAMESPACE) == "1":

    def test_the_shipped_configuration_forwards_every_instance_as_stored(
            orthanc: Orthanc, shipped: tuple[EngineProcess, int], corpus: Path) -> None:
        engine, port = shipped
        orthanc.start()
        sources = _send_corpus(port, corpus)
        wait_until(lambda: orthanc.count() == len(sources), timeout=120, what="every instance in Orthanc")
        received = orthanc.instances()
        assert set(received) == set(sources)
        stored = dict(sqlite_rows(engine.data_dir / "radbridge.db",
                                  "SELECT sop_instance_uid, transfer_syntax_uid FROM instances"))
        for uid, path in sources.items():
            original = dcmread(path)
            ds, syntax = received[uid]
            assert syntax == stored[uid], path.name  # forwarded in the transfer syntax it was stored in
            assert ds.PixelData == original.PixelData, path.name
        compressed = [stored[str(dcmread(corpus / "dicom" / n, stop_before_pixels=True).SOPInstanceUID)]
                      for n in FILES]
        assert compressed[:3] == ["1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.50"]
        assert "images forwarded to pacs (PACS@127.0.0.1" in engine.log()

    def test_orthanc_down_gets_the_images_when_it_comes_up(
            orthanc: Orthanc, shipped: tuple[EngineProcess, int], corpus: Path) -> None:
        engine, port = shipped
        sources = _send_corpus(port, corpus)  # Orthanc not started yet
        wait_until(lambda: "attempt 2 failed" in engine.log(), timeout=60, what="a failed retry")
        orthanc.start()
        wait_until(lambda: orthanc.count() == len(sources), timeout=180, what="delivery once Orthanc is up")
        assert set(orthanc.instances()) == set(sources)
