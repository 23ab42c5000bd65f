"""Content negotiation over HTTP: ``Accept`` qualities (q=0 is "not acceptable") and ``_format`` overriding it."""

from __future__ import annotations

import pytest

from tests.fhir.conftest import FhirHttp, InProcessEngine
from tests.fhir.messages import orm

UID = "1.2.826.0.1.3680043.10.991.1"


@pytest.fixture(scope="module")
def seeded(engine: InProcessEngine, api: FhirHttp) -> str:
    assert engine.send(orm(910, "ACCEPT1", "ACCEPT^ANNA", study_uid=UID)) == ["AA"]
    engine.settle()
    return UID


def _paths(study: str) -> list[str]:
    return ["metadata", f"ImagingStudy/{study}", "ImagingStudy", f"ImagingStudy/{study}/_history", "_history"]


@pytest.mark.parametrize("accept", [
    "application/fhir+json;q=0",
    "application/fhir+json; q=0.0, application/json;q=0",
    "application/fhir+json;q=0, */*",  # the most specific range decides: FHIR JSON is refused even beside */*
    "*/*;q=0",
    "application/json;q=0",
    "application/xml, application/fhir+json;q=0.000",
])
def test_a_media_range_of_quality_zero_is_not_acceptable(api: FhirHttp, seeded: str, accept: str) -> None:
    # q=0 was ignored: 'Accept: application/fhir+json;q=0' was answered with FHIR JSON (200).
    for path in _paths(seeded):
        response = api.get(path, headers={"Accept": accept})
        assert response.status_code == 406, (path, accept, response.status_code)
        assert response.json()["resourceType"] == "OperationOutcome"
        assert response.json()["issue"][0]["code"] == "not-supported"


@pytest.mark.parametrize("accept", [
    "application/fhir+json;q=0.1",
    "application/xml;q=0, application/fhir+json",
    "application/xml, */*;q=0.01",
    "application/json;q=0, application/*;q=0.5",
    "application/fhir+json;q=0, application/json",  # a JSON name this server answers to, still wanted
    "application/fhir+json;q=bad",  # an unreadable quality is read as 1, not refused
])
def test_a_media_range_of_positive_quality_is_served(api: FhirHttp, seeded: str, accept: str) -> None:
    for path in _paths(seeded):
        assert api.get(path, headers={"Accept": accept}).status_code == 200, (path, accept)


def test_format_overrides_the_accept_header(api: FhirHttp, seeded: str) -> None:
    # R4 http.html#mime-type: _format overrides Accept. 'Accept: application/xml' with _format=json was 406.
    for path in _paths(seeded):
        for accept in ("application/fhir+xml", "application/fhir+json;q=0"):
            response = api.get(path, params={"_format": "json"}, headers={"Accept": accept})
            assert response.status_code == 200, (path, accept, response.text)
        assert api.get(path, params={"_format": "xml"}, headers={"Accept": "application/fhir+json"}).status_code == 406


def test_a_format_in_a_search_body_overrides_the_accept_header(api: FhirHttp, seeded: str) -> None:
    # A POST _search's parameters are its body: a _format there overrides Accept as one in the query does.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = f"identifier=urn:oid:{seeded}"
    for accept, fmt, status in (("application/fhir+json;q=0", "json", 200), ("application/fhir+xml", "json", 200),
                                ("application/fhir+json;q=0", None, 406), ("application/fhir+json", "xml", 406)):
        content = f"{body}&_format={fmt}" if fmt else body
        response = api.request("POST", "ImagingStudy/_search", content=content, headers={**form, "Accept": accept})
        assert response.status_code == status, (accept, fmt, response.text)
        if status == 200:
            assert response.json()["total"] == 1


@pytest.mark.parametrize(("accept", "answered"), [
    ("application/fhir+json;q=0, application/json", "application/json"),
    ("application/json", "application/json"),
    ("application/json, application/fhir+json;q=0.5", "application/json"),
    ("application/json+fhir", "application/json+fhir"),
    ("application/fhir+json;q=0, */*", None),  # 406 (as before), its OperationOutcome in a type */* accepts
    ("application/fhir+json;q=0", None),  # 406, and nothing JSON is acceptable: the OperationOutcome as FHIR JSON
    ("application/json;q=0.5, application/fhir+json", "application/fhir+json"),
    ("application/json, application/fhir+json", "application/fhir+json"),  # a tie: FHIR's own name
    ("*/*", "application/fhir+json"),
    ("application/*", "application/fhir+json"),
])
def test_the_answer_is_in_a_media_type_the_client_accepts(api: FhirHttp, seeded: str, accept: str,
                                                           answered: str | None) -> None:
    """fhirfix6: 'Accept: application/fhir+json;q=0, application/json' was answered 200 with Content-Type
    application/fhir+json, the one type the client had refused; every answer (read, search, history, metadata,
    errors) now comes in the JSON type the client prefers."""
    paths = [*_paths(seeded), f"ImagingStudy/{seeded}/_history/1", "ImagingStudy?status=nonsense-modifier:x",
             "ImagingStudy?bogus=1", "ImagingStudy/no-such-study", "Nothing/1", "fhir-nothing/a/b/c/d"]
    for path in paths:
        response = api.get(path, headers={"Accept": accept})
        assert response.status_code in (200, 400, 404, 406), (path, response.status_code)
        expected = answered or ("application/json" if "*/*" in accept else "application/fhir+json")
        assert response.headers["content-type"] == f"{expected}; charset=utf-8", (path, accept, response.status_code)
        if answered is None:
            assert response.status_code == 406 or path.startswith("fhir-nothing"), path  # no route: 404 first


def test_a_format_names_the_answers_media_type(api: FhirHttp, seeded: str) -> None:
    for path in _paths(seeded):
        for fmt, answered in (("json", "application/fhir+json"), ("application/json", "application/json"),
                              ("application/fhir+json", "application/fhir+json")):
            response = api.get(path, params={"_format": fmt}, headers={"Accept": "application/fhir+json;q=0"})
            assert response.headers["content-type"] == f"{answered}; charset=utf-8", (path, fmt)
    form = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/fhir+json"}
    body = f"identifier=urn:oid:{seeded}&_format=application/json"
    response = api.request("POST", "ImagingStudy/_search", content=body, headers=form)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json; charset=utf-8"
    response = api.request("POST", "ImagingStudy/_search", content=f"identifier=urn:oid:{seeded}",
                           headers={**form, "Accept": "application/fhir+json;q=0, application/json"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json; charset=utf-8"
