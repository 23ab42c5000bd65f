"""Report documents (a PDF in an OBX of type ED) served as Binary resources by URL, over HTTP with real clients.

A DiagnosticReport carried each document inline as base64 ``data``: a search page of 50 reports with a
10 MB PDF each was 500 MB of JSON. ``presentedForm`` now names the document (``url`` ``Binary/…``, ``size``,
``hash``), and fhirclient, fhirpy, fhir-kit-client and a plain HTTP GET fetch it byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fhirclient import client as smart_client
from fhirclient.models.binary import Binary
from fhirclient.models.diagnosticreport import DiagnosticReport
from fhirpy import SyncFHIRClient
from sqlalchemy import select

from engine.auth import Principal
from engine.store.schema import audit_events
from tests.conftest import need
from tests.fhir.conftest import NODE_MODULES, FhirHttp, InProcessEngine, R4Schema, ScopedAuthorizer
from tests.fhir.messages import orm, oru

PDF = b"%PDF-1.4\n" + os.urandom(300 * 1024) + b"\n%%EOF\n"  # every byte value, and larger than a page should be
REPORTS = 3


def _oru_with_pdf(n: int, control: str, pdf: bytes) -> str:
    """The ORU^R01 of :func:`oru` with the signed report as a PDF in an OBX of type ED (HL7 0191 AP, PDF)."""
    obx = f"OBX|2|ED|PDF^Report PDF||^AP^PDF^Base64^{base64.b64encode(pdf).decode()}||||||F"
    return oru(n, control, "F", "No acute finding.").rstrip("\r") + "\r" + obx + "\r"


@pytest.fixture(scope="module")
def reported(engine: InProcessEngine, api: FhirHttp) -> list[str]:
    """REPORTS orders, each reported with the PDF; their accession numbers."""
    assert engine.send(*(orm(930 + n, f"BIN{n}", "BINARY^BEN") for n in range(REPORTS))) == ["AA"] * REPORTS
    assert engine.report(*(_oru_with_pdf(930 + n, f"BINR{n}", PDF) for n in range(REPORTS))) == ["AA"] * REPORTS
    engine.settle()
    return [f"ACC{930 + n}" for n in range(REPORTS)]


def _pdf_form(resource: dict) -> dict:
    forms = [f for f in resource["presentedForm"] if f["contentType"] == "application/pdf"]
    assert len(forms) == 1, resource["presentedForm"]
    return dict(forms[0])


def test_a_search_page_names_the_pdfs_by_url_and_stays_small(api: FhirHttp, reported: list[str]) -> None:
    response = api.get("DiagnosticReport", params={"identifier": ",".join(reported)})
    bundle = response.json()
    assert bundle["total"] == REPORTS
    # Before: each entry carried the PDF as base64 (400 KB each); now the page is a few KB whatever the PDFs.
    assert len(response.content) < 20_000, len(response.content)
    for entry in bundle["entry"]:
        form = _pdf_form(entry["resource"])
        assert "data" not in form
        assert form["url"].startswith("Binary/report-") and form["size"] == len(PDF)
        assert form["hash"] == base64.b64encode(hashlib.sha1(PDF).digest()).decode()
        assert entry["resource"]["presentedForm"][0]["contentType"].startswith("text/plain")  # the text stays inline


def test_fhirclient_and_fhirpy_fetch_the_pdf_byte_for_byte(engine: InProcessEngine, api: FhirHttp,
                                                           reported: list[str]) -> None:
    fhir = SyncFHIRClient(engine.base)
    report = fhir.resources("DiagnosticReport").search(identifier=reported[0]).fetch()[0]
    url = _pdf_form(report.serialize())["url"]
    binary = fhir.reference(reference=url).to_resource()  # fhirpy: GET [base]/Binary/id, Accept FHIR JSON
    assert binary["resourceType"] == "Binary" and binary["contentType"] == "application/pdf"
    assert base64.b64decode(binary["data"]) == PDF
    smart = smart_client.FHIRClient(settings={"app_id": "radbridge-tests", "api_base": engine.base})
    strict = DiagnosticReport.read(report.id, smart.server)  # fhirclient's model refuses unknown elements
    form = next(f for f in strict.presentedForm if f.contentType == "application/pdf")
    assert form.url == url and form.size == len(PDF)
    document = Binary.read(url.split("/")[1], smart.server)
    assert document.contentType == "application/pdf" and base64.b64decode(document.data) == PDF
    as_fhir = api.get(url, headers={"Accept": "application/fhir+json"}).json()  # schema-checked
    assert as_fhir["securityContext"] == {"reference": f"DiagnosticReport/{report.id}"}


def test_fhir_kit_client_fetches_the_pdf_byte_for_byte(engine: InProcessEngine, reported: list[str]) -> None:
    need(shutil.which("node") is not None and (NODE_MODULES / "fhir-kit-client").is_dir(),
         "node and fhir-kit-client (make install) are needed")
    script = Path(__file__).with_name("fhir_kit_binary.mjs")
    done = subprocess.run(["node", str(script), str(NODE_MODULES), engine.base, reported[1]],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert [(d["contentType"], d["sha256"]) for d in answer["documents"]] == [
        ("application/pdf", hashlib.sha256(PDF).hexdigest())]


def test_a_plain_get_of_the_url_is_the_pdf_itself(engine: InProcessEngine, api: FhirHttp, reported: list[str]) -> None:
    # R4 http.html#binary: without a FHIR Accept, the content itself, in its own type.
    bundle = api.get("DiagnosticReport", params={"identifier": reported[2]}).json()
    url = _pdf_form(bundle["entry"][0]["resource"])["url"]
    for accept in (None, "application/pdf", "*/*", "application/pdf, application/fhir+json;q=0.5"):
        response = httpx.get(f"{engine.base}/{url}", headers={"Accept": accept} if accept else {}, timeout=30)
        assert response.status_code == 200, (accept, response.text[:200])
        assert response.headers["content-type"] == "application/pdf" and response.content == PDF
    for accept in ("application/fhir+json", "application/json"):
        assert api.get(url, headers={"Accept": accept}).json()["resourceType"] == "Binary"
    assert api.get(url, params={"_format": "json"}, headers={"Accept": "application/pdf"}).json()["data"]
    refused = api.get(url, headers={"Accept": "image/png"})
    assert refused.status_code == 406 and refused.json()["resourceType"] == "OperationOutcome"
    assert api.get(url, params={"_format": "xml"}).status_code == 406
    version = url.rsplit("-", 2)[0]
    for missing in (f"{url}9", f"{version}-9-1", "Binary/report-999-1-1", "Binary/1", "Binary/report-1-1-0"):
        assert api.get(missing, headers={"Accept": "application/fhir+json"}).status_code == 404, missing


def test_a_text_document_beyond_latin_1_is_served_in_utf_8_with_its_charset(engine: InProcessEngine,
                                                                            api: FhirHttp) -> None:
    """hl7fix6: an OBX ED with ED-4 A (the text itself) in a UTF-8 ORU^R01 holding Greek and CJK was left out of
    presentedForm, without a word; a plain GET of its URL now gives the characters received, UTF-8, and says so."""
    text = "Ακτινογραφία θώρακος: χωρίς ευρήματα. 正常"
    assert engine.send(orm(960, "BINA", "BINARY^ANNA")) == ["AA"]
    message = oru(960, "BINAR", "F").rstrip("\r") + f"\rOBX|1|ED|TXT^Report text||^TEXT^plain^A^{text}||||||F\r"
    assert engine.report(message) == ["AA"]
    engine.settle()
    bundle = api.get("DiagnosticReport", params={"identifier": "ACC960"}).json()
    (form,) = bundle["entry"][0]["resource"]["presentedForm"]
    assert form["contentType"] == "text/plain; charset=utf-8" and form["size"] == len(text.encode())
    for accept in (None, "text/plain", "text/*"):
        response = httpx.get(f"{engine.base}/{form['url']}", headers={"Accept": accept} if accept else {},
                             timeout=30)
        assert response.status_code == 200, (accept, response.text[:200])
        assert response.headers["content-type"] == "text/plain; charset=utf-8" and response.text == text


TOKENS = {
    "reports": Principal("results", frozenset({"system/DiagnosticReport.rs"})),
    "reports-v1": Principal("results-v1", frozenset({"system/DiagnosticReport.read"})),
    "report-search-only": Principal("searcher", frozenset({"system/DiagnosticReport.s"})),
    "binary-only": Principal("binaries", frozenset({"system/Binary.rs"})),
    "binary-v1": Principal("binaries-v1", frozenset({"system/Binary.read"})),
    "binary-r": Principal("binaries-r", frozenset({"system/Binary.r"})),
    "everything-v1": Principal("everything", frozenset({"system/*.read"})),
    "binary-search-only": Principal("binary-searcher", frozenset({"system/Binary.s"})),
    "studies": Principal("studies", frozenset({"system/ImagingStudy.rs"})),
}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessEngine]:
    running = InProcessEngine(tmp_path_factory.mktemp("binary-auth"), authorizer=ScopedAuthorizer(TOKENS))
    running.start()
    assert running.send(orm(940, "BINAUTH1", "SECRET^SAM")) == ["AA"]
    assert running.report(_oru_with_pdf(940, "BINAUTHR1", PDF)) == ["AA"]
    running.settle()
    yield running
    running.stop()


def test_a_wildcard_that_refuses_the_documents_type_still_gets_the_binary_resource(api: FhirHttp,
                                                                                 reported: list[str]) -> None:
    """review9: 'Accept: application/pdf;q=0, */*' refuses the PDF but accepts anything else (RFC 9110 12.5.1),
    the Binary resource in FHIR JSON among it; it was 406, as if neither form were acceptable."""
    bundle = api.get("DiagnosticReport", params={"identifier": reported[1]}).json()
    url = _pdf_form(bundle["entry"][0]["resource"])["url"]
    for accept in ("application/pdf;q=0, */*", "application/pdf;q=0, application/*;q=0.5"):
        response = api.get(url, headers={"Accept": accept})
        assert response.status_code == 200, (accept, response.text[:200])
        assert response.json()["resourceType"] == "Binary" and base64.b64decode(response.json()["data"]) == PDF
    assert api.get(url, headers={"Accept": "application/pdf;q=0, application/fhir+json;q=0, */*"}).status_code == 406


def test_the_pdf_needs_read_on_binary_or_diagnostic_report_and_is_audited(secured: InProcessEngine,
                                                                          r4_schema: R4Schema) -> None:
    """A SMART backend client asks for system/Binary.read (v1) or system/Binary.rs/.r (v2) to fetch documents: it
    was refused (403, only DiagnosticReport read admitted a Binary read). Read on Binary or on the report admits it;
    search alone, or another type, does not; every read is audited with the client that made it."""
    def client(token: str | None) -> FhirHttp:
        return FhirHttp(secured.base, r4_schema, {"Authorization": f"Bearer {token}"} if token else {})

    report = client("reports").get("DiagnosticReport", params={"identifier": "ACC940"}).json()["entry"][0]["resource"]
    url = _pdf_form(report)["url"]
    assert client(None).get(url).status_code == 401
    assert client("not-a-token").get(url).status_code == 401
    for token in ("report-search-only", "binary-search-only", "studies"):
        refused = client(token).get(url)
        assert refused.status_code == 403, token
        assert "insufficient_scope" in refused.headers["www-authenticate"]
    assert client("reports-v1").get(url, params={"_format": "json"}).json()["resourceType"] == "Binary"
    allowed = ("reports", "binary-only", "binary-v1", "binary-r", "everything-v1")
    for token in allowed:
        raw = httpx.get(f"{secured.base}/{url}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert raw.status_code == 200 and raw.content == PDF, token
    assert secured.runtime is not None and secured.runtime.db is not None
    rows = secured.runtime.db.read(lambda c: c.execute(
        select(audit_events).where(audit_events.c.object_type == "Binary").order_by(audit_events.c.id)).all())
    assert [(r.actor, r.action, r.object_id) for r in rows] == [
        (TOKENS[t].client_id, "fhir.read", url.split("/")[1]) for t in ("reports-v1", *allowed)]
    assert json.loads(rows[0].detail)["resources"] == [url, f"DiagnosticReport/{report['id']}"]


def test_a_binary_as_fhir_json_comes_in_the_json_type_the_client_accepts(api: FhirHttp, reported: list[str]) -> None:
    """fhirfix6: 'Accept: application/fhir+json;q=0, application/json' got the Binary resource labelled
    application/fhir+json, the type it refused."""
    bundle = api.get("DiagnosticReport", params={"identifier": reported[2]}).json()
    url = _pdf_form(bundle["entry"][0]["resource"])["url"]
    for accept, answered in (("application/fhir+json;q=0, application/json", "application/json"),
                             ("application/json", "application/json"),
                             ("application/fhir+json", "application/fhir+json")):
        response = api.get(url, headers={"Accept": accept})
        assert response.headers["content-type"] == f"{answered}; charset=utf-8", accept
        assert base64.b64decode(response.json()["data"]) == PDF
