"""Type- and system-level ``_history`` over HTTP: newest first, ``_count``/``_since`` paging with stable next links,
audited, listed in the CapabilityStatement; Bundles checked against the R4 schema, read by fhir-kit-client."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhirclient import client as smart_client
from sqlalchemy import select

from engine.store.schema import audit_events
from tests.conftest import need
from tests.fhir.conftest import NODE_MODULES, FhirHttp, InProcessEngine
from tests.fhir.messages import orm, oru


@pytest.fixture(scope="module")
def reports(engine: InProcessEngine) -> str:
    """Two reports: PL401 final then corrected (2 versions), PL402 final; the instant between the two phases."""
    assert engine.send(orm(401, "HIST1", "HISTORY^HAL"), orm(402, "HIST1", "HISTORY^HAL")) == ["AA", "AA"]
    assert engine.report(oru(401, "H401A", "F", "First."), oru(402, "H402A", "F", "Other.")) == ["AA", "AA"]
    engine.settle()
    time.sleep(0.05)
    between = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(0.05)
    assert engine.report(oru(401, "H401B", "C", "Corrected.")) == ["AA"]
    engine.settle()
    return between


def _versions(bundle: dict) -> list[str]:
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}/{e['resource']['meta']['versionId']}"
            for e in bundle.get("entry", [])]


def _next(bundle: dict) -> str:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")


def _pages(api: FhirHttp, path: str, params: dict[str, str] | None) -> list[dict]:
    found, url, query = [], path, params
    while url:
        bundle = api.get(url, params=query).json()
        found.append(bundle)
        url, query = _next(bundle), None  # the next link carries its own query
    return found


def test_type_history_lists_every_version_newest_first(api: FhirHttp, reports: str) -> None:
    bundle = api.get("DiagnosticReport/_history").json()
    assert bundle["type"] == "history" and "total" not in bundle
    assert _versions(bundle) == ["DiagnosticReport/1/2", "DiagnosticReport/2/1", "DiagnosticReport/1/1"]
    first = bundle["entry"][-1]
    assert first["request"] == {"method": "POST", "url": "DiagnosticReport"}
    assert first["response"]["status"] == "201 Created" and first["response"]["etag"] == 'W/"1"'
    assert bundle["entry"][0]["request"] == {"method": "PUT", "url": "DiagnosticReport/1"}
    assert bundle["entry"][0]["fullUrl"].endswith("/DiagnosticReport/1/_history/2")


def test_type_history_pages_follow_next_links(api: FhirHttp, reports: str) -> None:
    pages = _pages(api, "DiagnosticReport/_history", {"_count": "1"})
    assert [_versions(p) for p in pages] == [["DiagnosticReport/1/2"], ["DiagnosticReport/2/1"],
                                             ["DiagnosticReport/1/1"]]
    assert all("_count=1" in p["link"][0]["url"] for p in pages)


def test_since_keeps_the_versions_stored_at_or_after_it(api: FhirHttp, reports: str) -> None:
    assert _versions(api.get("DiagnosticReport/_history", params={"_since": reports}).json()) == [
        "DiagnosticReport/1/2"]
    assert _versions(api.get("DiagnosticReport/_history", params={"_since": "2999-01-01T00:00:00Z"}).json()) == []


def test_next_links_are_stable_when_versions_arrive_meanwhile(engine: InProcessEngine, api: FhirHttp,
                                                               reports: str) -> None:
    first = api.get("ServiceRequest/_history", params={"_count": "1"}).json()
    assert engine.send(orm(403, "HIST1", "HISTORY^HAL")) == ["AA"]  # a new ServiceRequest, newer than all
    engine.settle()
    rest = _pages(api, _next(first), None)
    seen = _versions(first) + [v for p in rest for v in _versions(p)]
    everything = _versions(api.get("ServiceRequest/_history", params={"_count": "500"}).json())
    assert everything[0] not in seen  # the newcomer sorts before page one: no later page shifts
    assert seen == everything[1:]  # nothing skipped, nothing repeated, newest first


def test_system_history_spans_every_type(api: FhirHttp, reports: str) -> None:
    seen = [v for p in _pages(api, "_history", {"_count": "2"}) for v in _versions(p)]
    assert {v.split("/")[0] for v in seen} >= {"DiagnosticReport", "ServiceRequest", "ImagingStudy", "Patient",
                                               "Endpoint"}
    assert len(seen) == len(set(seen))
    assert seen.index("DiagnosticReport/1/2") < seen.index("DiagnosticReport/1/1")


@pytest.mark.parametrize("query", [{"_cursor": "x"}, {"_since": "yesterday"}, {"_at": "2026"}, {"_count": "a"},
                                   {"patient": "Patient/1"}])
def test_bad_history_parameters_are_400(api: FhirHttp, query: dict[str, str]) -> None:
    for path in ("DiagnosticReport/_history", "_history"):
        response = api.get(path, params=query)
        assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"


def test_history_of_an_unknown_type_is_404(api: FhirHttp) -> None:
    assert api.get("Observation/_history").status_code == 404


def test_type_history_is_audited_with_the_versions_served(engine: InProcessEngine, api: FhirHttp,
                                                          reports: str) -> None:
    api.get("DiagnosticReport/_history", params={"_count": "2"})
    assert engine.runtime is not None and engine.runtime.db is not None
    row = engine.runtime.db.read(lambda c: c.execute(
        select(audit_events.c.action, audit_events.c.object_type, audit_events.c.detail)
        .where(audit_events.c.action == "fhir.history").order_by(audit_events.c.id.desc()).limit(1)).one())
    detail = json.loads(row.detail)
    assert row.object_type == "DiagnosticReport" and detail["query"] == "_count=2"
    assert detail["resources"] == ["DiagnosticReport/1/_history/2", "DiagnosticReport/2/_history/1"]


def test_the_capability_statement_lists_type_and_system_history(engine: InProcessEngine, api: FhirHttp) -> None:
    statement = api.get("metadata").json()
    assert [i["code"] for i in statement["rest"][0]["interaction"]] == ["history-system"]
    for resource in statement["rest"][0]["resource"]:
        if resource["type"] != "Binary":  # report documents: read only
            assert "history-type" in {i["code"] for i in resource["interaction"]}
    smart = smart_client.FHIRClient(settings={"app_id": "radbridge-tests", "api_base": engine.base})
    smart.server.get_capability()  # strict: any element fhirclient does not know raises
    assert smart.server.capabilityStatement.rest[0].interaction[0].code == "history-system"


def test_fhir_kit_client_reads_type_and_system_history(engine: InProcessEngine, reports: str) -> None:
    need(shutil.which("node") is not None and (NODE_MODULES / "fhir-kit-client").is_dir(),
         "node and fhir-kit-client (make install) are needed")
    script = Path(__file__).with_name("fhir_kit_history.mjs")
    done = subprocess.run(["node", str(script), str(NODE_MODULES), engine.base], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["type"] == "history"
    assert answer["typeVersions"][:3] == ["DiagnosticReport/1/2", "DiagnosticReport/2/1", "DiagnosticReport/1/1"]
    assert len(answer["system"]) == len(set(answer["system"])) and "DiagnosticReport/1/1" in answer["system"]
