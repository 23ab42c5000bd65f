"""sekmet-fhir (a FastAPI + SQLite FHIR R4 server from PyPI) as the side-by-side peer of bench_fhir.

Installed on first use into ``.peers/sekmet`` (its own venv, pinned). The first ``N`` studies
and their patients are copied from radbridge's own resources (read from the benchmark's
database) with conditional updates, then the same measurements run against it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from tests.conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".peers" / "sekmet"
VERSION = "0.1.1"


def _install() -> None:
    if not (VENV / "bin" / "uvicorn").exists():
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", f"sekmet-fhir=={VERSION}"], check=True)


def _put(conn: http.client.HTTPConnection, path: str, resource: dict[str, Any]) -> str:
    conn.request("PUT", path, body=json.dumps(resource), headers={"Content-Type": "application/fhir+json"})
    response = conn.getresponse()
    body = response.read()
    assert response.status in (200, 201), (path, response.status, body[:300])
    return str(json.loads(body)["id"])


def _load(base: str, db_file: Path, studies: int) -> tuple[dict[int, str], dict[str, str]]:
    """Copy the first ``studies`` ImagingStudies and their Patients; (our patient pk → theirs, uid → their id)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    ours = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    rows = ours.execute("SELECT json FROM fhir_resources WHERE res_type = 'ImagingStudy' ORDER BY id LIMIT ?",
                        (studies,)).fetchall()
    patients: dict[int, str] = {}
    uids: dict[str, str] = {}
    for (text,) in rows:
        study = json.loads(text)
        pk = int(study["subject"]["reference"].split("/")[1])
        if pk not in patients:
            (ptext,) = ours.execute("SELECT json FROM fhir_resources WHERE res_type = 'Patient' AND res_id = ?",
                                    (str(pk),)).fetchone()
            patient = {k: v for k, v in json.loads(ptext).items() if k not in ("id", "meta")}
            ident = patient["identifier"][0]
            key = quote(f"{ident['system']}|{ident['value']}")
            patients[pk] = _put(conn, f"{parts.path}/Patient?identifier={key}", patient)
        body = {k: v for k, v in study.items() if k not in ("id", "meta", "basedOn", "endpoint")}
        for item in body.get("series", []):
            item.pop("endpoint", None)
        body["subject"] = {"reference": f"Patient/{patients[pk]}"}
        key = quote(f"urn:dicom:uid|{study['identifier'][0]['value']}")
        uids[study["id"]] = _put(conn, f"{parts.path}/ImagingStudy?identifier={key}", body)
    return patients, uids


def run_sekmet(args: argparse.Namespace, workdir: Path, measure: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Load ``args.sekmet`` studies into sekmet-fhir and measure it like radbridge."""
    _install()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = workdir / "settings.yaml"
    settings.write_text(f"base_url: http://127.0.0.1:{port}/fhir\nhost: 127.0.0.1\nport: {port}\n"
                        f"data_dir: {workdir / 'data'}\nsimulator: {{enabled: false}}\nlog_inbound: false\n")
    log = open(workdir / "sekmet.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen([str(VENV / "bin" / "uvicorn"), "sekmet.main:app_factory", "--factory", "--host",
                             "127.0.0.1", "--port", str(port), "--no-access-log"], cwd=workdir,
                            env={**os.environ, "SEKMET_CONFIG": str(settings)}, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc=proc, timeout=60)
        base = f"http://127.0.0.1:{port}/fhir"
        started = time.perf_counter()
        db_file = (args.reuse or workdir.parent / "radbridge") / "var" / "radbridge.db"
        patients, uids = _load(base, db_file, args.sekmet)
        loaded = time.perf_counter() - started
        keys = sorted(patients)
        their = {i + 1: patients[k] for i, k in enumerate(keys)}
        figures = measure(base, sorted(uids), len(their), args.requests, args.clients, args.seconds,
                          lambda p: f"Patient/{their[p]}", lambda u: f"ImagingStudy/{uids[u]}", proc.pid)
        return {**figures, "loaded_studies": len(uids), "load_s": round(loaded, 1)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
