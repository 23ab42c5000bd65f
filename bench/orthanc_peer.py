"""Orthanc with its DICOMweb plugin (QIDO-RS, C++) as the side-by-side peer of bench_fhir.

Orthanc 1.10 (Debian ``orthanc``) and its plugin (Debian ``orthanc-dicomweb``, installed by
``make peers``) bind every interface and have no bind option, so whoever runs Orthanc must do
it inside a private network namespace (bench_fhir re-executes itself under ``unshare --net``).

The first ``N`` studies of radbridge's benchmark database (the same patient ids, study UIDs,
accession numbers, dates, modalities and series) are stored in Orthanc as one small instance
per series without pixel data (pydicom), posted to its REST API over a few parallel connections.
Orthanc keeps its index in SQLite (its default). Then the QIDO-RS equivalents of the FHIR
searches are measured with bench_fhir's own client and figures:

===================================  ============================================================
FHIR (radbridge, sekmet)             QIDO-RS (Orthanc)
===================================  ============================================================
``ImagingStudy?patient=Patient/n``   ``/dicom-web/studies?PatientID=MRNn``
``ImagingStudy?identifier=urn:oid:``  ``/dicom-web/studies?StudyInstanceUID=<uid>``
``ImagingStudy?modality=CT&_count``  ``/dicom-web/studies?ModalitiesInStudy=CT&limit=100&offset=k``
read ``ImagingStudy/<uid>``          ``/dicom-web/studies?StudyInstanceUID=<uid>`` (one study's
                                     attributes, as a read returns one resource)
===================================  ============================================================
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

from tests.conftest import free_port, wait_for_port

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: Storage SOP class of each modality of the benchmark's studies.
SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
               "US": "1.2.840.10008.5.1.4.1.1.6.1", "CR": "1.2.840.10008.5.1.4.1.1.1",
               "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
QIDO_HEADERS = {"Accept": "application/dicom+json"}
#: Set by a completed load in Orthanc's directory: the number of studies it holds (``--reuse``).
LOADED_MARK = "bench-loaded.json"


@dataclass
class OrthancPeer:
    """One Orthanc process with the DICOMweb plugin, its index (SQLite) and storage under ``root``."""

    root: Path
    http_port: int = 0
    dicom_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def qido(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        config = {"Name": "BENCH", "StorageDirectory": str(self.root), "IndexDirectory": str(self.root),
                  "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True,
                  "DicomAlwaysAllowEcho": True, "DicomCheckCalledAet": False, "Plugins": [str(PLUGIN)],
                  # Loading speed only (no query reads them): no fsync per stored file, no jobs saved.
                  "SyncStorageArea": False, "SaveJobs": False,
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                               "Host": f"127.0.0.1:{self.http_port}", "Ssl": False}}
        (self.root / "orthanc.json").write_text(json.dumps(config))
        with open(self.root / "orthanc.log", "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(["Orthanc", str(self.root / "orthanc.json")],
                                         env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/usr/sbin:/bin"},
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.http_port, proc=self.proc, timeout=120)
        wait_for_port(self.dicom_port, proc=self.proc, timeout=120)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)  # the index stays locked until it has exited
        self.proc = None

    def statistics(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/statistics", timeout=30) as answer:
            return dict(json.loads(answer.read()))


@dataclass(frozen=True)
class SeriesRow:
    """One series of one study of the benchmark database, with everything its instance carries."""

    patient_id: str
    issuer: str
    patient_name: str
    sex: str
    birth_date: str
    study_uid: str
    accession: str
    study_date: str
    study_time: str
    description: str
    series_uid: str
    modality: str
    series_number: int


_SERIES_SQL = """
SELECT p.patient_id, p.issuer, p.patient_name, p.sex, p.birth_date, st.study_instance_uid, st.accession_number,
       st.study_date, st.study_time, coalesce(o.requested_procedure_description, ''), se.series_instance_uid,
       se.modality, se.series_number
FROM studies st JOIN patients p ON p.id = st.patient_pk JOIN series se ON se.study_pk = st.id
LEFT JOIN orders o ON o.id = st.order_pk
WHERE st.id IN (SELECT id FROM studies ORDER BY id LIMIT ?)
ORDER BY st.id, se.series_number
"""


def series_rows(db_file: Path, studies: int) -> list[SeriesRow]:
    """Every series of the first ``studies`` studies (by primary key, as sekmet gets them)."""
    with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True) as db:
        return [SeriesRow(*row) for row in db.execute(_SERIES_SQL, (studies,))]


def instance(row: SeriesRow) -> Dataset:
    """A one-instance series without pixel data, carrying the study's and the series' attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SOP_CLASSES[row.modality]
    ds.SOPInstanceUID = f"{row.series_uid}.1"
    ds.PatientID, ds.IssuerOfPatientID, ds.PatientName = row.patient_id, row.issuer, row.patient_name
    ds.PatientSex, ds.PatientBirthDate = row.sex, row.birth_date
    ds.StudyInstanceUID, ds.AccessionNumber, ds.StudyID = row.study_uid, row.accession, "1"
    ds.StudyDate, ds.StudyTime, ds.StudyDescription = row.study_date, row.study_time, row.description
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = row.series_uid, row.modality, \
        row.series_number, 1
    return ds


def encoded(row: SeriesRow) -> bytes:
    """:func:`instance` as a DICOM file (Part 10, explicit VR little endian)."""
    out = BytesIO()
    dcmwrite(out, instance(row), enforce_file_format=True)
    return out.getvalue()


def _send(port: int, rows: list[SeriesRow], errors: list[str]) -> None:
    """POST each row's instance to ``/instances`` on one keep-alive connection; failures go to ``errors``."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for row in rows:
            conn.request("POST", "/instances", body=encoded(row), headers={"Content-Type": "application/dicom"})
            answer = conn.getresponse()
            body = answer.read()
            if answer.status != 200:
                errors.append(f"POST /instances of {row.series_uid}: {answer.status} {body[:200]!r}")
                return
    except Exception as exc:  # a thread's failure must reach load()'s assertion
        errors.append(repr(exc))


def load(peer: OrthancPeer, rows: list[SeriesRow], connections: int = 4) -> float:
    """Store one instance per row through Orthanc's REST API (``POST /instances``: the same ingestion as a
    C-STORE, and about 8 times the rate of a pynetdicom association here) over ``connections`` parallel
    connections; seconds taken."""
    errors: list[str] = []
    started = time.perf_counter()
    threads = [threading.Thread(target=_send, args=(peer.http_port, rows[k::connections], errors))
               for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    return time.perf_counter() - started


def qido_pages(client: Any, query: str, size: int, count: int) -> list[float]:
    """Milliseconds per ``size``-entry page of ``query`` (limit/offset), from offset 0 again after the last."""
    found: list[float] = []
    offset = 0
    while len(found) < count:
        started = time.perf_counter()
        status, body = client.get(f"studies?{query}&limit={size}&offset={offset}")
        elapsed = (time.perf_counter() - started) * 1000
        assert status == 200, (status, body[:200])
        entries = len(json.loads(body))
        # Orthanc 1.10 + plugin 1.7 apply the offset inside the limit when ModalitiesInStudy is given, so
        # every page after the first comes back empty there (docs/performance.md): only full pages count.
        offset = offset + size if entries == size else 0
        if entries == size:  # a short last page is not a full page
            found.append(elapsed)
    return found


def measure_qido(base: str, uids: list[str], patient_ids: list[str], requests: int, clients: int, seconds: float,
                 pid: int | None = None, page_size: int = 100) -> dict[str, Any]:
    """bench_fhir's measurements, QIDO-RS style (see the module's table); ``uids``: the studies served."""
    from bench.bench_fhir import Client, percentiles, reads_per_second, timed

    rng = random.Random(1)
    client = Client(base, QIDO_HEADERS)
    timed(client, ["studies?limit=1"] * 20)  # warm-up
    by_patient = timed(client, [f"studies?PatientID={rng.choice(patient_ids)}" for _ in range(requests)])
    by_uid = timed(client, [f"studies?StudyInstanceUID={rng.choice(uids)}" for _ in range(requests)])
    page = qido_pages(client, "ModalitiesInStudy=CT", page_size, max(20, requests // 20))
    ids = [rng.choice(uids) for _ in range(2000)]
    found = {"patient": len(json.loads(client.get(f"studies?PatientID={patient_ids[0]}")[1])),
             "identifier": len(json.loads(client.get(f"studies?StudyInstanceUID={uids[0]}")[1]))}
    reads = reads_per_second(base, ids, clients, seconds, lambda u: f"studies?StudyInstanceUID={u}", pid,
                             QIDO_HEADERS)
    return {"patient": percentiles(by_patient), "identifier": percentiles(by_uid), f"page{page_size}":
            percentiles(page), **reads, "entries_found": found}


@dataclass
class Loaded:
    """What Orthanc holds after :func:`prepared`: the studies' UIDs and their patients' ids."""

    uids: list[str]
    patient_ids: list[str]
    instances: int
    load_s: float


def _loaded(rows: list[SeriesRow], load_s: float) -> Loaded:
    uids = list(dict.fromkeys(r.study_uid for r in rows))
    return Loaded(uids, sorted({r.patient_id for r in rows}), len(rows), load_s)


@contextmanager
def prepared(peer: OrthancPeer, db_file: Path, studies: int) -> Iterator[Loaded]:
    """Start ``peer`` holding the first ``studies`` studies of ``db_file``: loaded now, or by an earlier run
    into the same directory (its mark names the count); stopped on leaving the context."""
    rows = series_rows(db_file, studies)
    mark = peer.root / LOADED_MARK
    reuse = mark.exists() and json.loads(mark.read_text()).get("studies") == studies
    peer.start()
    try:
        if reuse:
            load_s = float(json.loads(mark.read_text())["load_s"])
        else:
            assert peer.statistics()["CountInstances"] == 0, f"{peer.root} holds other studies"
            load_s = load(peer, rows)
            mark.write_text(json.dumps({"studies": studies, "load_s": round(load_s, 1)}))
        stats = peer.statistics()
        assert stats["CountStudies"] == studies and stats["CountInstances"] == len(rows), stats
        yield _loaded(rows, load_s)
    finally:
        peer.stop()


def run_orthanc(args: argparse.Namespace, workdir: Path, page_size: int = 100) -> dict[str, Any]:
    """Load ``args.orthanc`` studies into Orthanc (or reuse them under ``--reuse``) and measure QIDO-RS."""
    root = args.reuse / "orthanc" if args.reuse is not None else workdir
    db_file = (args.reuse or workdir.parent / "radbridge") / "var" / "radbridge.db"
    peer = OrthancPeer(root)
    with prepared(peer, db_file, args.orthanc) as held:
        assert peer.proc is not None
        figures = measure_qido(peer.qido, held.uids, held.patient_ids, args.requests, args.clients, args.seconds,
                               peer.proc.pid, page_size)
    return {**figures, "loaded_studies": len(held.uids), "loaded_instances": held.instances,
            "load_s": round(held.load_s, 1), "instances_per_s": round(held.instances / held.load_s)
            if held.load_s else None}


def ratios(ours: dict[str, Any], theirs: dict[str, Any], page: str = "page100") -> dict[str, float]:
    """Their p50 ÷ ours for each search (above 1: we answer faster), ours ÷ theirs for reads/s."""
    found = {k: round(theirs[k]["p50_ms"] / ours[k]["p50_ms"], 2) for k in ("patient", "identifier")}
    found["page100"] = round(theirs[page]["p50_ms"] / ours["page100"]["p50_ms"], 2)
    found["reads_per_s"] = round(ours["reads_per_s"] / theirs["reads_per_s"], 2)
    return found


__all__ = ["Loaded", "OrthancPeer", "SeriesRow", "instance", "load", "measure_qido", "prepared", "ratios",
           "run_orthanc", "series_rows"]
