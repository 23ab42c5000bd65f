"""PIR end to end with Orthanc as the PACS: trauma images, then an A40 and an A08, resent (``on_correction: resend``).

Like test_forward_orthanc.py, this runs in a private network namespace (Orthanc binds
every interface). Orthanc's REST API is the evidence: each SOP Instance UID has a copy
under the real patient with the real name once the corrections are forwarded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import ROOT, EngineProcess, free_port, need, wait_for_port
from tests.dicom.conftest import DCMTK
from tests.integration.forward_peer import wait_until
from tests.integration.test_forward_orthanc import Orthanc
from tests.integration.test_reconcile_e2e import adt_a40, orm, send, storescu

_IN_NAMESPACE = "RADBRIDGE_TEST_IN_NETNS"


def adt_a08(pid: str, name: str) -> str:
    return "\r".join([
        "MSH|^~\\&|HIS|NORTH|RADBRIDGE|NORTH|20261205110000||ADT^A08^ADT_A01|M08|P|2.5.1",
        "EVN|A08|20261205110000",
        f"PID|1||{pid}^^^NORTH^MR||{name}||19500505|F",
        "PV1|1|O",
    ]) + "\r"  # fmt: skip


if os.environ.get(_IN_NAMESPACE) != "1":

    @pytest.mark.timeout(900)
    def test_pir_with_orthanc_in_a_private_network_namespace(tmp_path: Path) -> None:
        need(shutil.which("Orthanc") is not None, "Orthanc not installed")
        need(shutil.which("unshare") is not None and DCMTK, "unshare or DCMTK not available")
        inner = (f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider"
                 f" --basetemp={tmp_path / 'inner'} {Path(__file__)}")
        done = subprocess.run(["unshare", "--net", "sh", "-c", inner], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, _IN_NAMESPACE: "1"}, timeout=880)
        assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
        assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


def _copies(orthanc: Orthanc) -> dict[str, set[tuple[str, str]]]:
    """SOP Instance UID -> {(PatientID, PatientName)} of every copy Orthanc holds."""
    out: dict[str, set[tuple[str, str]]] = {}
    for ident in json.loads(orthanc.get("/instances")):
        tags = json.loads(orthanc.get(f"/instances/{ident}/simplified-tags"))
        out.setdefault(tags["SOPInstanceUID"], set()).add((tags["PatientID"], tags["PatientName"]))
    return out


if os.environ.get(_IN_NAMESPACE) == "1":

    def test_trauma_images_reach_orthanc_then_the_a40_and_the_a08_follow(
            engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
        root = tmp_path / "orthanc"
        root.mkdir()
        orthanc = Orthanc(root, free_port(), free_port())
        orthanc.options = {"OverwriteInstances": True}  # a resend under the same patient replaces the copy
        mllp, dicom = free_port(), free_port()
        (engine_process.config_dir / "engine.yaml").write_text(f"""
data_dir: {engine_process.data_dir}
mappings_dir: {ROOT / 'mappings'}
dicom: {{port: {dicom}}}
reconcile: {{poll_interval_seconds: 0.3}}
outbox: {{poll_interval_seconds: 0.2}}
destinations:
  - {{name: pacs, type: dicom, host: 127.0.0.1, port: {orthanc.dicom_port}, called_ae_title: PACS}}
""")
        (engine_process.config_dir / "channels" / "ris.yaml").write_text(f"""
name: ris-inbound
source: {{type: mllp, port: {mllp}}}
accept: {{message_types: ["ADT^*", "ORM^O01"]}}
mapping: [adt-to-patient, order-to-worklist]
handlers: [patients, orders]
""")
        try:
            orthanc.start()
            engine_process.start(wait_port=mllp)
            wait_for_port(dicom, proc=engine_process.proc)
            assert send(mllp, orm(4, "TRAUMA4", "MOF5026", name="UNKNOWN^TRAUMA")) == "AA"
            files = []
            for src in sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[:2]:
                ds = dcmread(src)  # the modality took the trauma identity from the worklist
                ds.PatientID, ds.PatientName = "TRAUMA4", "UNKNOWN^TRAUMA"
                files.append(tmp_path / src.name)
                ds.save_as(files[-1])
            storescu(dicom, files)
            uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
            trauma = {("TRAUMA4", "UNKNOWN^TRAUMA")}
            wait_until(lambda: {u: c for u, c in _copies(orthanc).items()} == dict.fromkeys(uids, trauma),
                       timeout=120, what="the trauma images in Orthanc")

            assert send(mllp, adt_a40("REAL4", "REAL^PERSON", "TRAUMA4")) == "AA"
            real = ("REAL4", "REAL^PERSON")
            wait_until(lambda: all(real in _copies(orthanc).get(u, set()) for u in uids), timeout=120,
                       what="the merged identity in Orthanc")
            rows = engine_process.cli("studies", "list", "--json").stdout
            assert "REAL4" in rows and "TRAUMA4" not in rows

            assert send(mllp, adt_a08("REAL4", "REAL^PERSONA")) == "AA"
            renamed = ("REAL4", "REAL^PERSONA")
            wait_until(lambda: all(renamed in _copies(orthanc).get(u, set()) for u in uids), timeout=120,
                       what="the corrected name in Orthanc")
            # OverwriteInstances: the copy under REAL4 was replaced, not doubled
            assert all(real not in _copies(orthanc)[u] for u in uids)
        finally:
            engine_process.stop()
            orthanc.stop()
