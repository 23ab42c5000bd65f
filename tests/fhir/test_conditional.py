"""Conditional reads beyond the current version (vread, Binary) and an empty ``_count``: found by a client campaign."""

from __future__ import annotations

import base64
import email.utils
import time

import httpx
import pytest

from tests.fhir.conftest import FhirHttp, InProcessEngine
from tests.fhir.messages import orm, oru

UID = "1.2.826.0.1.3680043.10.778.1"


@pytest.fixture(scope="module")
def reported(engine: InProcessEngine) -> None:
    assert engine.send(orm(780, "COND1", "CONDITIONAL^CORA", study_uid=UID)) == ["AA"]
    obx = "OBX|2|ED|PDF^Report PDF||^AP^PDF^Base64^" + base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode() + "||||||F"
    assert engine.report(oru(780, "COND-R1", "F", "No acute finding.").rstrip("\r") + "\r" + obx + "\r") == ["AA"]
    engine.settle()


def test_a_vread_answers_304_to_the_etag_the_client_holds(engine: InProcessEngine, reported: None) -> None:
    """fhirfix6: 'If-None-Match: W/"1"' on ImagingStudy/x/_history/1 (or If-Modified-Since after it) was answered
    200 with the whole resource, though a version never changes and a read of the same resource said 304; so was
    a Binary (ETag W/"1", a document of a report version never changes)."""
    later = email.utils.formatdate(time.time() + 3600, usegmt=True)
    vread = f"{engine.base}/ImagingStudy/{UID}/_history/1"
    for headers in ({"If-None-Match": 'W/"1"'}, {"If-None-Match": '"1"'}, {"If-None-Match": 'W/"7", W/"1"'},
                    {"If-Modified-Since": later}):
        response = httpx.get(vread, headers=headers, timeout=30)
        assert response.status_code == 304 and response.content == b"", (headers, response.status_code)
        assert response.headers["etag"] == 'W/"1"'
    assert httpx.get(vread, headers={"If-None-Match": 'W/"2"'}, timeout=30).status_code == 200


def test_a_binary_answers_304_to_the_etag_the_client_holds(engine: InProcessEngine, api: FhirHttp,
                                                           reported: None) -> None:
    report = api.get("DiagnosticReport", params={"identifier": "ACC780"}).json()["entry"][0]["resource"]
    url = f"{engine.base}/{report['presentedForm'][1]['url']}"
    assert httpx.get(url, timeout=30).content.startswith(b"%PDF")
    cached = httpx.get(url, headers={"If-None-Match": 'W/"1"'}, timeout=30)
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == 'W/"1"'
    assert httpx.get(url, headers={"If-None-Match": 'W/"2"'}, timeout=30).status_code == 200


def test_an_empty_count_is_the_default_count(engine: InProcessEngine, api: FhirHttp) -> None:
    """fhirfix6: '_count=' (a client that fills in a blank page size) was a 400 "_count must be a whole number";
    a search parameter without a value is ignored (R4 3.1.1.5), as every other one is here."""
    assert engine.send(orm(781, "COND2", "CONDITIONAL^CORA", study_uid=UID + "1")) == ["AA"]
    engine.settle()
    for path in ("ImagingStudy", "ImagingStudy/_history", f"ImagingStudy/{UID}1/_history", "_history"):
        response = api.get(path, params={"_count": ""})
        assert response.status_code == 200, (path, response.text)
        assert response.json()["resourceType"] == "Bundle"
