"""Reference search values that are absolute URLs, over HTTP with fhirpy: only this server's base matches
(R4 3.1.1.4.8); another server's ``Patient/1`` is not ours."""

from __future__ import annotations

from fhirpy import SyncFHIRClient

from tests.fhir.conftest import FhirHttp, InProcessEngine
from tests.fhir.messages import orm, oru

UID = "1.2.826.0.1.3680043.10.992.1"


def test_an_absolute_reference_matches_only_under_this_servers_base(engine: InProcessEngine, api: FhirHttp) -> None:
    assert engine.send(orm(920, "REFBASE1", "BASE^BEA", study_uid=UID)) == ["AA"]
    assert engine.report(oru(920, "REFBASE-R1", "F", "No acute finding.")) == ["AA"]
    engine.settle()
    subject = api.get(f"ImagingStudy/{UID}").json()["subject"]["reference"]
    fhir = SyncFHIRClient(engine.base)
    ours = f"{engine.base}/{subject}"
    for res_type in ("DiagnosticReport", "ImagingStudy", "ServiceRequest"):
        assert len(fhir.resources(res_type).search(subject=ours).fetch()) == 1, res_type
        assert len(fhir.resources(res_type).search(subject=subject).fetch()) == 1, res_type
        # Before: the same id on another server matched our patient's resources.
        for foreign in (f"http://other.example/fhir/{subject}", f"{engine.base}/other/{subject}",
                        f"https://127.0.0.1:{engine.http_port}/fhir/{subject}"):
            assert fhir.resources(res_type).search(subject=foreign).fetch() == [], (res_type, foreign)
            assert api.get(res_type, params={"patient": foreign}).json()["total"] == 0
    # ORed with a local value, the foreign one adds nothing and takes nothing away.
    both = api.get("DiagnosticReport", params={"subject": f"http://other.example/fhir/{subject},{subject}"}).json()
    assert both["total"] == 1
    report = both["entry"][0]["resource"]["id"]
    assert api.get("Patient", params={"_revinclude": "DiagnosticReport:subject",
                                      "_id": subject.split("/")[1]}).json()["entry"][1]["resource"]["id"] == report


def test_a_versioned_reference_matches_the_resource_whatever_the_version(engine: InProcessEngine,
                                                                         api: FhirHttp) -> None:
    """fhirfix6: ``subject=<our base>/Patient/1/_history/2`` (and ``Patient/1/_history/2``) was a 400, "is not a
    reference". Our references name resources, not versions: a versioned value matches what refers to its resource
    (R4 3.1.1.4.8 lets a reference value carry a version; a reference to another server's resource still matches
    nothing, and a ``_history`` part without a version is still unreadable)."""
    uid = "1.2.826.0.1.3680043.10.992.2"
    assert engine.send(orm(921, "REFVER1", "VERSION^VERA", study_uid=uid)) == ["AA"]
    assert engine.report(oru(921, "REFVER-R1", "F", "No acute finding.")) == ["AA"]
    engine.settle()
    subject = api.get(f"ImagingStudy/{uid}").json()["subject"]["reference"]
    version = api.get(subject).json()["meta"]["versionId"]
    fhir = SyncFHIRClient(engine.base)
    for value in (f"{engine.base}/{subject}/_history/{version}", f"{subject}/_history/{version}",
                  f"{subject}/_history/{int(version) + 1}", f"{engine.base}/{subject}/_history/1/"):
        for res_type in ("DiagnosticReport", "ImagingStudy", "ServiceRequest"):
            assert len(fhir.resources(res_type).search(subject=value).fetch()) == 1, (res_type, value)
            assert api.get(res_type, params={"patient": value}).json()["total"] == 1, (res_type, value)
    foreign = f"http://other.example/fhir/{subject}/_history/{version}"
    assert api.get("DiagnosticReport", params={"subject": foreign}).json()["total"] == 0
    for unreadable in (f"{subject}/_history/", f"{subject}/_history/x", "_history/1", f"{engine.base}/_history/1"):
        response = api.get("DiagnosticReport", params={"subject": unreadable})
        assert response.status_code == 400, (unreadable, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
