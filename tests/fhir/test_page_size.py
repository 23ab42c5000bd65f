"""Large text reports: a search page is bounded in size, and a large report text is served by URL as a Binary.

A report system that sends megabytes of text (5 MB of findings, or of impression) made a DiagnosticReport of that
size, and a search page of 50 of them one response of hundreds of MB, built in memory. Now a report text over
``INLINE_TEXT_BYTES`` is named by URL (``Binary/report-<r>-<v>-0``) like a PDF, and a page stops adding matches
once it holds ``MAX_PAGE_CHARS`` of JSON (the ``next`` link goes on from there, so paging still gives every match).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import httpx
from fhirclient import client as smart_client
from fhirclient.models.binary import Binary
from fhirpy import SyncFHIRClient

from engine.fhir.binary import INLINE_TEXT_BYTES
from engine.fhir.query import MAX_PAGE_CHARS
from tests.fhir.conftest import NODE_MODULES, FhirHttp, InProcessEngine
from tests.fhir.messages import orm, oru


def _words(n: int, seed: str) -> str:
    """About ``n`` characters of report-like text (ASCII: its UTF-8 size is its length)."""
    line = f"{seed} no acute intracranial haemorrhage, mass effect or midline shift. "
    return (line * (n // len(line) + 1))[:n]


def test_a_large_report_text_is_a_binary_by_url(engine: InProcessEngine, api: FhirHttp) -> None:
    text = _words(5 * 1024 * 1024, "large text")
    assert engine.send(orm(960, "BIGTEXT1", "TEXT^TOM")) == ["AA"]
    assert engine.report(oru(960, "BIGTEXT-R1", "F", text)) == ["AA"]
    engine.settle()
    response = api.get("DiagnosticReport", params={"identifier": "ACC960"})
    assert len(response.content) < 64 * 1024, len(response.content)  # was more than 7 MB (5 MB in base64)
    report = response.json()["entry"][0]["resource"]
    form = report["presentedForm"][0]
    assert "data" not in form and form["contentType"] == "text/plain; charset=utf-8", form
    assert form["url"] == f"Binary/report-{report['id']}-1-0" and form["size"] > INLINE_TEXT_BYTES
    raw = httpx.get(f"{engine.base}/{form['url']}", timeout=30)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/plain")
    assert raw.text.strip() == text.strip() or text.strip() in raw.text
    assert base64.b64encode(hashlib.sha1(raw.content).digest()).decode() == form["hash"]
    assert len(raw.content) == form["size"]
    binary = SyncFHIRClient(engine.base).reference(reference=form["url"]).to_resource()  # fhirpy: FHIR JSON
    assert base64.b64decode(binary["data"]) == raw.content
    smart = smart_client.FHIRClient(settings={"app_id": "radbridge-tests", "api_base": engine.base})
    assert base64.b64decode(Binary.read(form["url"].split("/")[1], smart.server).data) == raw.content
    if shutil.which("node") is not None and (NODE_MODULES / "fhir-kit-client").is_dir():  # fhir-kit-client too
        script = Path(__file__).with_name("fhir_kit_binary.mjs")
        done = subprocess.run(["node", str(script), str(NODE_MODULES), engine.base, "ACC960"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert [(d["contentType"], d["sha256"]) for d in json.loads(done.stdout)["documents"]] == [
            ("text/plain; charset=utf-8", hashlib.sha256(raw.content).hexdigest())]
    # a small text stays inline, and its document 0 is no Binary
    assert engine.send(orm(961, "SMALLTEXT1", "TEXT^TIM")) == ["AA"]
    assert engine.report(oru(961, "SMALLTEXT-R1", "F", "No acute finding.")) == ["AA"]
    engine.settle()
    small = api.get("DiagnosticReport", params={"identifier": "ACC961"}).json()["entry"][0]["resource"]
    assert base64.b64decode(small["presentedForm"][0]["data"]).decode().strip() == "No acute finding."
    assert api.get(f"Binary/report-{small['id']}-1-0").status_code == 404


def test_a_search_page_is_bounded_in_size_and_paging_gives_every_report(engine: InProcessEngine,
                                                                        api: FhirHttp) -> None:
    conclusion = MAX_PAGE_CHARS * 3 // 8  # a page holds two such reports, not three
    accessions = [f"ACC{970 + n}" for n in range(5)]
    for n in range(5):
        assert engine.send(orm(970 + n, f"BIGIMP{n}", "IMPRESSION^IDA")) == ["AA"]
        assert engine.report(oru(970 + n, f"BIGIMP-R{n}", "F", "See impression.",
                                 impression=_words(conclusion, f"impression {n}"))) == ["AA"]
    engine.settle()
    pages, seen, url = 0, [], f"DiagnosticReport?identifier={','.join(accessions)}&_count=50"
    while url:
        response = api.get(url)
        bundle = response.json()
        assert bundle["total"] == 5
        assert len(response.content) < MAX_PAGE_CHARS + 64 * 1024, (pages, len(response.content))
        seen += [e["resource"]["identifier"][0]["value"] for e in bundle.get("entry", [])]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
        pages += 1
    assert sorted(seen) == accessions and pages == 3, (seen, pages)  # was one page of 5 (> 15 MB)
    # fhirpy follows the next links to the end
    fetched = SyncFHIRClient(engine.base).resources("DiagnosticReport").search(
        identifier=",".join(accessions)).limit(50).fetch_all()
    assert sorted(r["identifier"][0]["value"] for r in fetched) == accessions
    # a single match larger than the limit is still served, alone
    alone = api.get("DiagnosticReport", params={"identifier": accessions[0], "_count": "1"}).json()
    assert len(alone["entry"]) == 1
