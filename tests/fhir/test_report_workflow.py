"""Reports end to end: ORM and ORU^R01 over MLLP (python-hl7) in, FHIR R4 DiagnosticReport out over HTTP,
read by fhirclient, fhirpy and fhir-kit-client; every resource received is checked against the R4 schema."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

from fhirclient import client as smart_client
from fhirclient.models.diagnosticreport import DiagnosticReport
from fhirpy import SyncFHIRClient

from tests.conftest import need
from tests.fhir.conftest import NODE_MODULES, FhirHttp, InProcessEngine
from tests.fhir.messages import orm, oru

UID = "1.2.826.0.1.3680043.10.993.1"


def _text(resource: dict) -> str:
    return base64.b64decode(resource["presentedForm"][0]["data"]).decode()


def _report_of(api: FhirHttp, accession: str) -> dict:
    bundle = api.get("DiagnosticReport", params={"identifier": accession}).json()
    assert bundle["total"] == 1, bundle
    return dict(bundle["entry"][0]["resource"])


def test_an_oru_then_a_correction_give_two_versions(engine: InProcessEngine, api: FhirHttp) -> None:
    assert engine.send(orm(301, "REP1", "REPORTED^RAY", study_uid=UID)) == ["AA"]
    assert engine.report(oru(301, "R301A", "F", "No acute bleed.", impression="Normal CT head.")) == ["AA"]
    engine.settle()
    first = _report_of(api, "ACC301")
    assert (first["status"], first["meta"]["versionId"]) == ("final", "1")
    assert _text(first) == "No acute bleed.\nNormal CT head." and first["conclusion"] == "Normal CT head."
    assert first["imagingStudy"] == [{"reference": f"ImagingStudy/{UID}"}]
    request = api.get(first["basedOn"][0]["reference"]).json()
    assert request["subject"] == first["subject"]

    assert engine.report(oru(301, "R301B", "C", "Small left subdural haematoma.")) == ["AA"]
    engine.settle()
    current = api.get(f"DiagnosticReport/{first['id']}")
    assert current.headers["etag"] == 'W/"2"'
    assert current.json()["status"] == "corrected" and _text(current.json()) == "Small left subdural haematoma."
    old = api.get(f"DiagnosticReport/{first['id']}/_history/1")
    assert old.headers["etag"] == 'W/"1"'
    assert old.json()["status"] == "final" and _text(old.json()) == "No acute bleed.\nNormal CT head."
    history = api.get(f"DiagnosticReport/{first['id']}/_history").json()
    assert history["type"] == "history" and history["total"] == 2
    assert [(e["resource"]["meta"]["versionId"], e["resource"]["status"]) for e in history["entry"]] == [
        ("2", "corrected"), ("1", "final")]
    assert api.get(f"DiagnosticReport/{first['id']}/_history/3").status_code == 404


def test_an_addendum_after_a_final_is_amended_and_a_cancel_is_cancelled(engine: InProcessEngine,
                                                                       api: FhirHttp) -> None:
    assert engine.send(orm(302, "REP2", "REPORTED^RAY")) == ["AA"]
    assert engine.report(oru(302, "R302A", "P", "Wet read: no fracture.")) == ["AA"]
    engine.settle()
    assert _report_of(api, "ACC302")["status"] == "preliminary"
    assert engine.report(oru(302, "R302B", "F", "No fracture."), oru(302, "R302C", "F", "No fracture.",
                                                                     "Addendum: old rib fracture.")) == ["AA", "AA"]
    engine.settle()
    report = _report_of(api, "ACC302")
    assert (report["status"], report["meta"]["versionId"]) == ("amended", "3")
    assert engine.report(oru(302, "R302D", "X")) == ["AA"]
    engine.settle()
    cancelled = _report_of(api, "ACC302")
    assert (cancelled["status"], cancelled["meta"]["versionId"]) == ("cancelled", "4")
    statuses = api.get(f"DiagnosticReport/{report['id']}/_history").json()
    assert [e["resource"]["status"] for e in statuses["entry"]] == ["cancelled", "amended", "final", "preliminary"]


def test_searches_and_includes_of_diagnostic_reports(engine: InProcessEngine, api: FhirHttp) -> None:
    assert engine.send(orm(303, "REP3", "REPORTED^RAY", study_uid=f"{UID}.3")) == ["AA"]
    assert engine.report(oru(303, "R303A", "F", "Clear lungs.")) == ["AA"]
    engine.settle()
    report = _report_of(api, "ACC303")
    patient, request = report["subject"]["reference"], report["basedOn"][0]["reference"]
    for params in ({"patient": patient}, {"subject": patient}, {"based-on": request}, {"status": "final"},
                   {"code": "CTHEAD"}, {"category": "http://loinc.org|LP29684-5"}, {"date": "2026-11-22"},
                   {"_id": report["id"]}, {"identifier": f"urn:radbridge:report|{report['id']}"},
                   {"issued": f"ge{report['issued'][:10]}"}, {"imagingStudy": f"ImagingStudy/{UID}.3"}):
        found = api.get("DiagnosticReport", params=params).json()
        assert report["id"] in [e["resource"]["id"] for e in found.get("entry", [])], params
    assert api.get("DiagnosticReport", params={"patient": patient, "status": "cancelled"}).json()["total"] == 0
    included = api.get("DiagnosticReport", params={
        "_id": report["id"], "_include": ["DiagnosticReport:patient", "DiagnosticReport:based-on"]}).json()
    assert sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in included["entry"]
                  if e["search"]["mode"] == "include") == sorted([patient, request])
    studies = api.get("ImagingStudy", params={"_id": f"{UID}.3",
                                              "_revinclude": "DiagnosticReport:imagingStudy"}).json()
    assert [(e["resource"]["resourceType"], e["search"]["mode"]) for e in studies["entry"]] == [
        ("ImagingStudy", "match"), ("DiagnosticReport", "include")]


def test_imaging_study_revinclude_returns_every_report_of_the_study(engine: InProcessEngine, api: FhirHttp) -> None:
    uid = f"{UID}.4"
    assert engine.send(orm(304, "REP4", "REPORTED^RAY", study_uid=uid), orm(305, "REP4", "REPORTED^RAY",
                                                                           study_uid=uid)) == ["AA", "AA"]
    assert engine.report(oru(304, "R304A", "F", "Chest clear."), oru(305, "R305A", "F", "Abdomen clear.")) == [
        "AA", "AA"]
    engine.settle()
    bundle = api.get("ImagingStudy", params={"identifier": f"urn:oid:{uid}",
                                             "_revinclude": "DiagnosticReport:imagingStudy"}).json()
    reports = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert sorted(_text(r) for r in reports) == ["Abdomen clear.", "Chest clear."]


def test_fhir_clients_read_a_corrected_report(engine: InProcessEngine, api: FhirHttp) -> None:
    assert engine.send(orm(306, "REP6", "REPORTED^RAY")) == ["AA"]
    assert engine.report(oru(306, "R306A", "F", "First."), oru(306, "R306B", "C", "Second.")) == ["AA", "AA"]
    engine.settle()
    report_id = _report_of(api, "ACC306")["id"]
    smart = smart_client.FHIRClient(settings={"app_id": "radbridge-tests", "api_base": engine.base})
    smart.server.get_capability()
    served = {r.type: r for r in smart.server.capabilityStatement.rest[0].resource}
    assert {"vread", "history-instance"} <= {i.code for i in served["DiagnosticReport"].interaction}
    strict = DiagnosticReport.read(report_id, smart.server)  # fhirclient's model refuses unknown elements
    assert strict.status == "corrected" and strict.presentedForm[0].contentType.startswith("text/plain")
    fhir = SyncFHIRClient(engine.base)
    found = fhir.resources("DiagnosticReport").search(identifier="ACC306").fetch_all()
    assert [(r.id, r["meta"]["versionId"]) for r in found] == [(report_id, "2")]
    need(shutil.which("node") is not None and (NODE_MODULES / "fhir-kit-client").is_dir(),
         "node and fhir-kit-client (make install) are needed")
    script = Path(__file__).with_name("fhir_kit_report.mjs")
    done = subprocess.run(["node", str(script), str(NODE_MODULES), engine.base, report_id],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"read": ["2", "corrected"], "first": ["1", "final"],
                                       "versions": [["2", "corrected"], ["1", "final"]]}
