"""FHIR API benchmark: ImagingStudy searches and reads over HTTP against a running engine.

    .venv/bin/python -m bench.bench_fhir [--studies 100000] [--patients 20000] [--requests 1000]
                                          [--clients 4] [--seconds 10] [--sekmet N] [--orthanc N]

1. ``--studies`` studies with two series each (and their patients, orders and steps) are
   written to the domain tables of a fresh SQLite database; the FHIR projector builds every
   resource (its rate is printed), then ``radbridge run`` serves them with ``--auth smart`` (the
   default): a client registered with ``radbridge clients add`` gets a token from ``/auth/token``
   and sends it with every request; every read and search commits its audit row before its answer.
2. Over HTTP/1.1 keep-alive (``http.client``, one connection per client thread):
   ``ImagingStudy?patient=`` and ``?identifier=urn:oid:`` p50/p99 (sequential), a 100-entry
   page (``_count=100``, following ``next`` links), and reads/s from ``--clients`` threads.
3. ``--sekmet N``: the same searches on N of the studies in sekmet-fhir (a FastAPI FHIR server,
   installed into ``.peers/sekmet`` on first use), side by side, with the ratios.
4. ``--orthanc N``: the same N studies (patient ids, UIDs, accession numbers, dates, modalities,
   series) sent to Orthanc with its DICOMweb plugin (C++) over C-STORE, and the equivalent QIDO-RS
   searches measured with the same client (bench/orthanc_peer.py says which query matches which).
   Orthanc binds every interface, so the whole run re-executes itself in a private network
   namespace (``unshare --net``, loopback only; root). With ``--reuse DIR`` Orthanc's index and
   storage are kept in DIR/orthanc and the next run with the same N skips the load.
Figures are printed; this is not a pass/fail gate.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import insert

from engine.domain.tables import orders, patients, procedure_steps, series, studies
from engine.fhir.model import FhirSettings
from engine.fhir.projector import project_all
from engine.store.database import Database
from tests.conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.now(UTC)
MODALITIES = ("CT", "MR", "US", "CR", "DX")


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.10.54.{n}"


def _rows(start: int, end: int, patient_count: int) -> dict[Any, list[dict[str, Any]]]:
    rows: dict[Any, list[dict[str, Any]]] = {orders: [], procedure_steps: [], studies: [], series: []}
    for n in range(start, end):
        patient = n % patient_count + 1
        modality = MODALITIES[n % len(MODALITIES)]
        day = f"2026{1 + n % 12:02d}{1 + n % 28:02d}"
        rows[orders].append({"id": n + 1, "patient_pk": patient, "order_key": f"k{n}", "placer_order_number": f"PL{n}",
                             "accession_number": f"A{n}", "study_instance_uid": uid(n),
                             "requested_procedure_description": f"{modality} exam", "created_at": NOW,
                             "updated_at": NOW})
        rows[procedure_steps].append({"order_pk": n + 1, "status": "COMPLETED", "modality": modality,
                                      "start_datetime": f"{day}093000", "created_at": NOW, "updated_at": NOW})
        rows[studies].append({"id": n + 1, "study_instance_uid": uid(n), "patient_pk": patient, "order_pk": n + 1,
                              "accession_number": f"A{n}", "number_of_series": 2, "number_of_instances": 60,
                              "modalities_in_study": modality, "study_date": day, "study_time": "093000",
                              "first_seen_at": NOW, "last_seen_at": NOW})
        for s in (1, 2):
            rows[series].append({"study_pk": n + 1, "series_instance_uid": f"{uid(n)}.{s}", "modality": modality,
                                 "series_number": s, "number_of_instances": 30, "first_seen_at": NOW,
                                 "last_seen_at": NOW})
    return rows


def build(db: Database, study_count: int, patient_count: int) -> dict[str, float]:
    """Write the domain rows, then project them; seconds for each."""
    started = time.perf_counter()
    people = [{"id": p, "patient_id": f"MRN{p}", "issuer": "HOSP", "patient_name": f"PATIENT^{p}", "sex": "F",
               "birth_date": "19700101", "created_at": NOW, "updated_at": NOW} for p in range(1, patient_count + 1)]
    db.writer.call(lambda c: c.execute(insert(patients), people))
    for start in range(0, study_count, 5000):
        chunk = _rows(start, min(start + 5000, study_count), patient_count)
        db.writer.call(lambda c, chunk=chunk: [c.execute(insert(t), r) for t, r in chunk.items()])
    written = time.perf_counter()
    project_all(db, FhirSettings(UTC, dicomweb_base="https://pacs.example/dicom-web"), batch=20000)
    return {"domain_rows_s": written - started, "projection_s": time.perf_counter() - written}


#: Sent with every request of a run (the bearer token when the engine runs with ``http.auth: smart``).
HEADERS: dict[str, str] = {"Accept": "application/fhir+json"}


class Client:
    """One keep-alive HTTP connection; ``headers`` on every request (default: the FHIR run's HEADERS)."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        self.prefix = parts.path
        self.headers = HEADERS if headers is None else headers

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path if path.startswith("/") else f"{self.prefix}/{path}", headers=self.headers)
        response = self.conn.getresponse()
        return response.status, response.read()


def timed(client: Client, paths: list[str]) -> list[float]:
    """Milliseconds per request, sequentially."""
    found = []
    for path in paths:
        started = time.perf_counter()
        status, body = client.get(path)
        found.append((time.perf_counter() - started) * 1000)
        assert status == 200, (path, status, body[:200])
    return found


def percentiles(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2), "n": len(ordered)}


def pages(client: Client, first: str, count: int) -> list[float]:
    """Milliseconds per 100-entry page, following next links (from the first page again after the last)."""
    found, path = [], first
    while len(found) < count:
        started = time.perf_counter()
        status, body = client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        bundle = json.loads(body)
        assert status == 200, (status, body[:200])
        path = next((urlsplit(link["url"]).path + "?" + urlsplit(link["url"]).query for link in bundle["link"]
                     if link["relation"] == "next"), "") or first
        if len(bundle.get("entry", [])) == 100:  # a short last page is not a 100-entry page
            found.append(elapsed)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reads_per_second(base: str, ids: list[str], clients: int, seconds: float, path: Callable[[str], str],
                     pid: int | None = None, headers: dict[str, str] | None = None) -> dict[str, float]:
    """Reads/s from ``clients`` threads, and the server's CPU µs per read when its ``pid`` is given."""
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def work(k: int) -> None:
        client, rng = Client(base, headers), random.Random(k)
        while time.perf_counter() < stop:
            status, _ = client.get(path(rng.choice(ids)))
            assert status == 200
            done[k] += 1

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    cpu = cpu_seconds(pid) if pid else 0.0
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = {"reads_per_s": round(sum(done) / (time.perf_counter() - started), 1)}
    if pid:
        found["server_cpu_us_per_read"] = round((cpu_seconds(pid) - cpu) / sum(done) * 1e6)
    return found


def measure(base: str, uids: list[str], patient_count: int, requests: int, clients: int, seconds: float,
            patient_ref: Callable[[int], str], study_path: Callable[[str], str], pid: int | None = None
            ) -> dict[str, Any]:
    """p50/p99 of the two searches and of 100-entry pages, reads/s; ``uids``: the studies served."""
    rng = random.Random(1)
    client = Client(base)
    timed(client, ["ImagingStudy?_count=1"] * 20)  # warm-up
    by_patient = timed(client, [f"ImagingStudy?patient={patient_ref(rng.randrange(1, patient_count + 1))}"
                                for _ in range(requests)])
    by_uid = timed(client, [f"ImagingStudy?identifier=urn:oid:{rng.choice(uids)}" for _ in range(requests)])
    page = pages(client, "ImagingStudy?modality=CT&_count=100", max(20, requests // 20))
    ids = [rng.choice(uids) for _ in range(2000)]
    sample = rng.choice(uids)
    found = {"patient": len(json.loads(client.get(f"ImagingStudy?patient={patient_ref(1)}")[1]).get("entry", [])),
             "identifier": len(json.loads(client.get(f"ImagingStudy?identifier=urn:oid:{sample}")[1])
                               .get("entry", []))}
    return {"patient": percentiles(by_patient), "identifier": percentiles(by_uid), "page100": percentiles(page),
            **reads_per_second(base, ids, clients, seconds, study_path, pid), "entries_found": found}


#: The source tree the engine under test runs from (``--engine-root``: e.g. an export of an older commit).
ENGINE_ROOT = [ROOT]


def _cli(config: Path, *args: str) -> str:
    root = ENGINE_ROOT[0]
    return subprocess.run([sys.executable, "-m", "engine.cli.main", "--config", str(config), *args], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}, check=True, capture_output=True,
                          text=True).stdout


def bearer_token(config: Path, port: int) -> str:
    """Register a client (once per data directory) and get an access token (client_secret_basic)."""
    secret_file = config.parent / "bench-client.json"
    if not secret_file.exists():
        secret_file.write_text(_cli(config, "clients", "add", "bench", "--scope", "system/*.rs", "--secret", "--json"))
    client = json.loads(secret_file.read_text())
    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/auth/token", body="grant_type=client_credentials&scope=system%2F*.rs",
                 headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body[:300]
    return str(json.loads(body)["access_token"])


def start_engine(workdir: Path, port: int, synchronous: str = "FULL", auth: str = "smart",
                 extra: str = "") -> subprocess.Popen[bytes]:
    """``radbridge run`` on ``workdir`` serving HTTP on ``port``; with ``smart``, HEADERS gets a bearer token."""
    config = workdir / "config"
    (config / "channels").mkdir(parents=True, exist_ok=True)
    (config / "engine.yaml").write_text(
        f"data_dir: {workdir / 'var'}\ndicom: {{enabled: false}}\nlogging: {{level: WARNING}}\n"
        f"database: {{sqlite_synchronous: {synchronous}}}\nauth: {{token_lifetime_seconds: 3600}}\n{extra}"
        f"http: {{enabled: true, port: {port}, auth: {auth}, max_connections: 512,"
        " fhir: {dicomweb_base: 'https://pacs.example/dicom-web'}}\n")
    HEADERS.pop("Authorization", None)
    log = open(workdir / "engine.log", "ab")  # noqa: SIM115 - the child keeps it
    root = ENGINE_ROOT[0]
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "--config", str(config), "run"], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)}, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, proc=proc, timeout=120)
    if auth == "smart":
        HEADERS["Authorization"] = f"Bearer {bearer_token(config, port)}"
    return proc


def run_radbridge(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    counts = {"studies": args.studies, "patients": args.patients}
    if args.reuse is not None and (args.reuse / "var" / "radbridge.db").exists():  # built by an earlier run
        mark = args.reuse / "bench-built.json"
        if mark.exists() and json.loads(mark.read_text()) != counts:
            sys.exit(f"{args.reuse} was built with {mark.read_text()}, not {counts}")
        workdir, built = args.reuse, {"domain_rows_s": 0.0, "projection_s": 0.0}
    else:
        workdir = args.reuse or workdir  # a new --reuse directory: built here and kept
        (workdir / "var").mkdir(mode=0o700, parents=True)
        db = Database(f"sqlite:///{workdir / 'var' / 'radbridge.db'}", "NORMAL")
        db.migrate()
        built = build(db, args.studies, args.patients)
        db.close()
        (workdir / "bench-built.json").write_text(json.dumps(counts))
    port = free_port()
    proc = start_engine(workdir, port, args.synchronous, args.auth)
    try:
        figures = measure(f"http://127.0.0.1:{port}/fhir", [uid(n) for n in range(args.studies)], args.patients,
                          args.requests, args.clients, args.seconds, lambda p: f"Patient/{p}",
                          lambda u: f"ImagingStudy/{u}", proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        HEADERS.pop("Authorization", None)
    resources = 2 * args.studies + args.patients
    rate = round(resources / built["projection_s"]) if built["projection_s"] else None
    return {**figures, "build": {**{k: round(v, 1) for k, v in built.items()}, "projected_resources_per_s": rate}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL",
                        help="the engine's database.sqlite_synchronous (audit rows are committed before each answer)")
    parser.add_argument("--auth", choices=("smart", "development-no-auth"), default="smart",
                        help="the engine's http.auth (smart: a registered client's bearer token on every request)")
    parser.add_argument("--reuse", type=Path, help="a directory whose var/ an earlier run built: measure only"
                        " (a directory without var/radbridge.db is built and kept for the next run)")
    parser.add_argument("--sekmet", type=int, default=0, help="also load N studies into sekmet-fhir and compare")
    parser.add_argument("--orthanc", type=int, default=0, help="also load N studies into Orthanc (DICOMweb plugin)"
                        " and compare its QIDO-RS; with --reuse, kept in REUSE/orthanc for the next run")
    parser.add_argument("--engine-root", type=Path, help="run the engine from this source tree (A/B against"
                        " an older commit: git archive COMMIT | tar -x -C DIR)")
    args = parser.parse_args()
    if args.engine_root is not None:
        ENGINE_ROOT[0] = args.engine_root.resolve()
    if args.orthanc and os.environ.get(_IN_NAMESPACE) != "1":
        in_namespace(args)
    load = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-fhir-") as tmp:
        results: dict[str, Any] = {"radbridge": run_radbridge(args, Path(tmp) / "radbridge")}
        if args.sekmet:
            from bench.sekmet_peer import run_sekmet

            results["sekmet"] = run_sekmet(args, Path(tmp) / "sekmet", measure)
        if args.orthanc:
            from bench.orthanc_peer import run_orthanc

            results["orthanc"] = run_orthanc(args, Path(tmp) / "orthanc")
    results["ratios"] = peer_ratios(results)
    results["load_average"] = {"start": load, "end": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(results, indent=2))
    print(table(results))


#: Set in the environment of the copy of this benchmark that runs inside its private network namespace.
_IN_NAMESPACE = "RADBRIDGE_BENCH_IN_NETNS"


def in_namespace(args: argparse.Namespace) -> None:
    """Re-run this benchmark in a private network namespace (loopback only) and exit with its status:
    Orthanc binds every interface and has no bind option (PEERS.md)."""
    from bench.orthanc_peer import PLUGIN

    if not (shutil.which("unshare") and shutil.which("Orthanc") and PLUGIN.exists()):
        sys.exit("--orthanc needs unshare, Orthanc and its DICOMweb plugin (make peers installs them, as root)")
    if args.sekmet:  # no network in the namespace: install sekmet-fhir first
        from bench.sekmet_peer import _install

        _install()
    inner = f"ip link set lo up && exec {shlex.join([sys.executable, '-m', 'bench.bench_fhir', *sys.argv[1:]])}"
    sys.exit(subprocess.call(["unshare", "--net", "sh", "-c", inner], cwd=ROOT,
                             env={**os.environ, _IN_NAMESPACE: "1"}))


def peer_ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """For each peer run: its p50 ÷ radbridge's per search, radbridge's reads/s ÷ its (above 1: radbridge
    faster); and Orthanc against sekmet when both ran."""
    from bench.orthanc_peer import ratios

    found = {peer: ratios(results["radbridge"], results[peer]) for peer in ("sekmet", "orthanc") if peer in results}
    if "sekmet" in results and "orthanc" in results:
        found["orthanc_vs_sekmet"] = ratios(results["sekmet"], results["orthanc"])
    return found


def table(results: dict[str, Any]) -> str:
    """The figures side by side, in Markdown."""
    servers = [s for s in ("radbridge", "sekmet", "orthanc") if s in results]
    rows = [f"| measure | {' | '.join(servers)} |", "|---" * (len(servers) + 1) + "|"]
    for key, label in (("patient", "by patient p50 / p99 ms"), ("identifier", "by study UID p50 / p99 ms"),
                       ("page100", "100-entry page p50 / p99 ms")):
        rows.append(f"| {label} | " + " | ".join(f"{results[s][key]['p50_ms']} / {results[s][key]['p99_ms']}"
                                                 for s in servers) + " |")
    rows.append("| reads/s | " + " | ".join(str(results[s]["reads_per_s"]) for s in servers) + " |")
    rows.append("| server CPU µs a read | " + " | ".join(str(results[s].get("server_cpu_us_per_read"))
                                                         for s in servers) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
