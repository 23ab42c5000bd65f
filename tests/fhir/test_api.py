"""The REST conventions of the API, over HTTP: read, conditional read, errors, search parameters, paging."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.fhir.conftest import FhirHttp, InProcessEngine
from tests.fhir.messages import orm

UIDS = [f"1.2.826.0.1.3680043.10.997.{n}" for n in range(12)]


@pytest.fixture(scope="module")
def seeded(engine: InProcessEngine, api: FhirHttp) -> str:
    """Twelve studies of one patient (CT, with the last three MR); the patient's reference."""
    messages = [orm(300 + n, "API1", "API^ABE", modality="MR" if n >= 9 else "CT", study_uid=uid)
                for n, uid in enumerate(UIDS)]
    assert engine.send(*messages) == ["AA"] * len(UIDS)
    engine.settle()
    return str(api.get(f"ImagingStudy/{UIDS[0]}").json()["subject"]["reference"])


def _ids(bundle: dict, mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def _outcome(response: httpx.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0]["code"])


def test_read_gives_etag_and_last_modified_and_if_none_match_is_304(api: FhirHttp, seeded: str) -> None:
    first = api.get(f"ImagingStudy/{UIDS[0]}")
    assert first.headers["etag"] == f'W/"{first.json()["meta"]["versionId"]}"'
    assert first.headers["last-modified"].endswith(" GMT")
    again = api.get(f"ImagingStudy/{UIDS[0]}", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    since = api.get(f"ImagingStudy/{UIDS[0]}", headers={"If-Modified-Since": first.headers["last-modified"]})
    assert since.status_code == 304
    stale = api.get(f"ImagingStudy/{UIDS[0]}", headers={"If-None-Match": 'W/"999"'})
    assert stale.status_code == 200


@pytest.mark.parametrize("path", ["ImagingStudy/9.9.9", "Patient/999999", "ServiceRequest/0", "Endpoint/nope",
                                  "ImagingStudy/9.9.9/_history", "ImagingStudy/9.9.9/_history/1"])
def test_unknown_ids_are_404_with_an_operation_outcome(api: FhirHttp, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 404 and _outcome(response) == "not-found"


def test_unknown_type_and_path_and_method_are_operation_outcomes(api: FhirHttp) -> None:
    assert api.get("Observation").status_code == 404
    assert api.get("ImagingStudy/a/b/c/d").status_code == 404
    put = api.request("PUT", f"ImagingStudy/{UIDS[0]}", content=b"{}")
    assert put.status_code == 405 and _outcome(put) == "not-supported"


@pytest.mark.parametrize("query", [
    {"foo": "bar"}, {"started": "2026-13-45"}, {"started": "ap2026"}, {"status:text": "x"},
    {"patient": "Observation/1"}, {"_count": "ten"}, {"_include": "ImagingStudy:interpreter"},
    {"_summary": "text"}, {"_sort": "started"}, {"_elements": "a b"}, {"_cursor": "x"},
    {"basedon": "ServiceRequest/<script>"},
])  # fmt: skip
def test_unknown_or_malformed_parameters_are_400(api: FhirHttp, seeded: str, query: dict[str, str]) -> None:
    response = api.get("ImagingStudy", params=query)
    assert response.status_code == 400 and _outcome(response) in ("invalid", "not-supported")


def test_lenient_handling_ignores_unknown_parameters_and_says_so(api: FhirHttp, seeded: str) -> None:
    response = api.get("ImagingStudy", params={"patient": seeded, "foo": "bar"},
                       headers={"Prefer": "handling=lenient"})
    bundle = response.json()
    assert response.status_code == 200 and bundle["total"] == len(UIDS)
    assert "foo" not in bundle["link"][0]["url"]
    outcomes = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert [o["issue"][0]["code"] for o in outcomes] == ["not-supported"] and "foo" in outcomes[0]["issue"][0][
        "diagnostics"]


def test_paging_follows_next_links_without_gaps_or_repeats(api: FhirHttp, seeded: str) -> None:
    url, seen, totals = "ImagingStudy", [], set()
    params: dict[str, str] | None = {"patient": seeded, "_count": "5"}
    while url:
        bundle = api.get(url, params=params).json()
        totals.add(bundle["total"])
        seen += _ids(bundle)
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
        params = None
    assert sorted(seen) == sorted(UIDS) and totals == {len(UIDS)}


def test_count_is_clamped_not_refused(api: FhirHttp, seeded: str) -> None:
    bundle = api.get("ImagingStudy", params={"patient": seeded, "_count": "100000"}).json()
    assert sorted(_ids(bundle)) == sorted(UIDS)
    assert dict(parse_qsl(urlsplit(bundle["link"][0]["url"]).query))["_count"] == "100000"


def test_post_search_equals_get(api: FhirHttp, seeded: str) -> None:
    query = {"patient": seeded, "modality": "MR"}
    got = api.get("ImagingStudy", params=query).json()
    posted = api.request("POST", "ImagingStudy/_search", data=query).json()
    assert _ids(posted) == _ids(got) and sorted(_ids(got)) == sorted(UIDS[9:])
    wrong = api.request("POST", "ImagingStudy/_search", json=query)
    assert wrong.status_code == 415


def test_summary_count_and_elements(api: FhirHttp, seeded: str) -> None:
    counted = api.get("ImagingStudy", params={"patient": seeded, "_summary": "count"}).json()
    assert counted["total"] == len(UIDS) and "entry" not in counted
    subset = api.get("ImagingStudy", params={"_id": UIDS[1], "_elements": "status,subject"}).json()
    resource = subset["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "status", "subject"}
    assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"


def test_tokens_follow_system_and_code_semantics(api: FhirHttp, seeded: str) -> None:
    def ids(value: str) -> list[str]:
        return _ids(api.get("ImagingStudy", params={"identifier": value}).json())

    assert ids(f"urn:oid:{UIDS[2]}") == [UIDS[2]]
    assert ids(f"urn:dicom:uid|urn:oid:{UIDS[2]}") == [UIDS[2]]
    assert ids(f"urn:other|urn:oid:{UIDS[2]}") == []
    assert ids(UIDS[2]) == []  # the identifier's value is the urn:oid: form
    assert ids("ACC302") == [UIDS[2]] and ids("urn:radbridge:accession|ACC302") == [UIDS[2]]
    assert ids("|ACC302") == []  # only identifiers without a system
    assert ids(f"urn:oid:{UIDS[2]},urn:oid:{UIDS[3]}") == UIDS[2:4]


def test_started_ranges_with_prefixes(api: FhirHttp, seeded: str) -> None:
    def total(*values: str) -> int:
        params = [("patient", seeded), *(("started", v) for v in values)]
        return int(api.get("ImagingStudy", params=params).json()["total"])

    assert total("2026-11-22") == len(UIDS)
    assert total("ge2026-11-22T09:30:00Z", "lt2026-11-22T09:30:01Z") == len(UIDS)
    assert total("gt2026-11-22") == 0 and total("lt2026-11-22") == 0 and total("eb2026-11-23") == len(UIDS)
    assert total("2026-11") == len(UIDS) and total("ne2026-11-22") == 0 and total("sa2026-11-21") == len(UIDS)


def test_status_modality_basedon_endpoint_id_and_last_updated(api: FhirHttp, seeded: str) -> None:
    def total(**params: str) -> int:
        return int(api.get("ImagingStudy", params={"patient": seeded, **params}).json()["total"])

    assert total(status="registered") == len(UIDS) and total(status="available") == 0
    assert total(modality="MR") == 3 and total(modality="http://dicom.nema.org/resources/ontology/DCM|CT") == 9
    basedon = api.get(f"ImagingStudy/{UIDS[4]}").json()["basedOn"][0]["reference"]
    assert _ids(api.get("ImagingStudy", params={"basedon": basedon}).json()) == [UIDS[4]]
    assert total(endpoint="Endpoint/dicomweb") == len(UIDS)
    assert total(_id=f"{UIDS[0]},{UIDS[1]}") == 2
    assert total(_lastUpdated="gt2000-01-01") == len(UIDS) and total(_lastUpdated="lt2000-01-01") == 0
    assert total(subject=seeded) == len(UIDS)


def test_includes_and_revincludes(api: FhirHttp, seeded: str) -> None:
    bundle = api.get("ImagingStudy", params=[("_id", UIDS[0]), ("_include", "ImagingStudy:patient"),
                                             ("_include", "ImagingStudy:basedon"),
                                             ("_include", "ImagingStudy:endpoint")]).json()
    included = {e["resource"]["resourceType"] for e in bundle["entry"] if e["search"]["mode"] == "include"}
    assert included == {"Patient", "ServiceRequest", "Endpoint"}
    patient = api.get("Patient", params={"_id": seeded.split("/")[1], "_revinclude": "ImagingStudy:patient"}).json()
    assert sorted(_ids(patient, "include")) == sorted(UIDS) and _ids(patient) == [seeded.split("/")[1]]


def test_patient_and_service_request_searches(api: FhirHttp, seeded: str) -> None:
    patients = api.get("Patient", params={"identifier": "API1", "name": "api", "gender": "female",
                                          "birthdate": "1980-02-02"}).json()
    assert _ids(patients) == [seeded.split("/")[1]]
    assert api.get("Patient", params={"family:exact": "ap"}).json()["total"] == 0
    assert api.get("Patient", params={"family:contains": "pi"}).json()["total"] >= 1
    requests = api.get("ServiceRequest", params={"patient": seeded, "status": "active", "intent": "order"}).json()
    assert requests["total"] == len(UIDS)
    assert api.get("Endpoint", params={"connection-type": "dicom-wado-rs"}).json()["total"] == 1


def test_only_fhir_json_is_served(api: FhirHttp) -> None:
    assert api.get("metadata", headers={"Accept": "application/fhir+xml"}).status_code == 406
    assert api.get("metadata", params={"_format": "xml"}).status_code == 406
    assert api.get("metadata", headers={"Accept": "application/json"}).status_code == 200


def test_the_capability_statement_lists_every_imaging_study_parameter(api: FhirHttp) -> None:
    statement = api.get("metadata").json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(resources) == {"ImagingStudy", "Patient", "ServiceRequest", "Endpoint", "DiagnosticReport", "Binary"}
    assert resources["Binary"]["interaction"][0]["code"] == "read" and len(resources["Binary"]["interaction"]) == 1
    names = {p["name"] for p in resources["ImagingStudy"]["searchParam"]}
    assert {"identifier", "patient", "subject", "started", "status", "modality", "basedon", "endpoint", "_id",
            "_lastUpdated"} <= names
    assert resources["ImagingStudy"]["searchInclude"] == ["ImagingStudy:patient", "ImagingStudy:subject",
                                                          "ImagingStudy:basedon", "ImagingStudy:endpoint"]
    assert "ImagingStudy:patient" in resources["Patient"]["searchRevInclude"]
    assert statement["fhirVersion"] == "4.0.1" and statement["date"]


def test_the_capability_statement_lists_diagnostic_report_and_what_history_serves(api: FhirHttp) -> None:
    resources = {r["type"]: r for r in api.get("metadata").json()["rest"][0]["resource"]}
    report = resources["DiagnosticReport"]
    assert {p["name"] for p in report["searchParam"]} == {
        "_id", "_lastUpdated", "identifier", "patient", "subject", "based-on", "imagingStudy", "status", "category",
        "code", "date", "issued"}
    assert report["searchInclude"] == ["DiagnosticReport:patient", "DiagnosticReport:subject",
                                       "DiagnosticReport:based-on", "DiagnosticReport:imagingStudy"]
    assert "DiagnosticReport:imagingStudy" in resources["ImagingStudy"]["searchRevInclude"]
    assert {"DiagnosticReport:patient", "DiagnosticReport:subject"} <= set(resources["Patient"]["searchRevInclude"])
    assert "DiagnosticReport:based-on" in resources["ServiceRequest"]["searchRevInclude"]
    assert [i for i in report["interaction"] if "documentation" in i] == []  # every version served
    kept = {i["code"]: i.get("documentation", "") for i in resources["ImagingStudy"]["interaction"]}
    assert "http.fhir.history" in kept["vread"] and "http.fhir.history" in kept["history-instance"]


def test_the_schema_check_fails_an_r5_imaging_study(api: FhirHttp) -> None:
    """The R4 schema check of these tests can fail: R5's modality (a CodeableConcept) is refused."""
    r5 = {"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Patient/1"},
          "modality": [{"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]}]}
    assert api.schema.errors(r5) != []
