"""Authorization through the engine.auth contract, and the audit trail, over HTTP.

A small test Authorizer with fixed tokens enforces SMART v2 (``.rs``) and v1 (``.read``)
scopes, so every 401/403 path of the API is exercised without the real token service.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from engine.auth import Principal
from engine.store.schema import audit_events
from tests.fhir.conftest import FhirHttp, InProcessEngine, R4Schema, ScopedAuthorizer
from tests.fhir.messages import orm, oru

TYPES = ["ImagingStudy", "Patient", "ServiceRequest", "Endpoint", "DiagnosticReport"]
TOKENS = {
    "all-v2": Principal("pacs-viewer", frozenset({"system/*.rs"})),
    "all-v1": Principal("ehr-v1", frozenset({"system/*.read"})),
    "study-read-only": Principal("reader", frozenset({"system/ImagingStudy.r"})),
    "study-search-only": Principal("searcher", frozenset({"system/ImagingStudy.s"})),
    "study-only": Principal("studies", frozenset({"system/ImagingStudy.rs"})),
    "patient-only": Principal("demographics", frozenset({"system/Patient.rs"})),
    "reports-v2": Principal("results", frozenset({"system/DiagnosticReport.rs"})),
    "reports-v1": Principal("results-v1", frozenset({"system/DiagnosticReport.read"})),
    "report-search-only": Principal("report-searcher", frozenset({"system/DiagnosticReport.s"})),
}
UID = "1.2.826.0.1.3680043.10.996.1"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessEngine]:
    running = InProcessEngine(tmp_path_factory.mktemp("auth"), authorizer=ScopedAuthorizer(TOKENS))
    running.start()
    assert running.send(orm(401, "AUTH1", "SECRET^SALLY", study_uid=UID)) == ["AA"]
    assert running.report(oru(401, "AUTHR1", "F", "Secret finding."), oru(401, "AUTHR2", "C", "Corrected.")) == [
        "AA", "AA"]
    running.settle()
    yield running
    running.stop()


def _client(engine: InProcessEngine, schema: R4Schema, token: str | None) -> FhirHttp:
    return FhirHttp(engine.base, schema, {"Authorization": f"Bearer {token}"} if token else {})


def _ids(engine: InProcessEngine) -> dict[str, str]:
    """An existing id of each type."""
    return {"ImagingStudy": UID, "Patient": "1", "ServiceRequest": "1", "Endpoint": "dicomweb",
            "DiagnosticReport": "1"}


def _audit(engine: InProcessEngine) -> list[tuple[str, str, str, str, dict]]:
    assert engine.runtime is not None and engine.runtime.db is not None
    rows = engine.runtime.db.read(lambda c: c.execute(select(audit_events).order_by(audit_events.c.id)).all())
    return [(r.actor, r.action, r.object_type, r.object_id, json.loads(r.detail)) for r in rows]


def test_metadata_is_public(secured: InProcessEngine, r4_schema: R4Schema) -> None:
    assert _client(secured, r4_schema, None).get("metadata").status_code == 200


@pytest.mark.parametrize("res_type", TYPES)
@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_no_or_unknown_token_is_401_for_read_and_search(secured: InProcessEngine, r4_schema: R4Schema,
                                                        res_type: str, token: str | None) -> None:
    client = _client(secured, r4_schema, token)
    for path in (f"{res_type}/{_ids(secured)[res_type]}", res_type, f"{res_type}/does-not-exist"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.json()["issue"][0]["code"] == "login"
        if token is None:  # no credentials: a challenge without an error code (RFC 6750 3.1)
            assert response.headers["www-authenticate"] == 'Bearer realm="radbridge"'
        else:
            assert response.headers["www-authenticate"].startswith('Bearer realm="radbridge", error="invalid_token"')


@pytest.mark.parametrize("res_type", TYPES)
def test_a_scope_for_another_type_is_403(secured: InProcessEngine, r4_schema: R4Schema, res_type: str) -> None:
    token = "patient-only" if res_type != "Patient" else "study-only"
    client = _client(secured, r4_schema, token)
    for response in (client.get(f"{res_type}/{_ids(secured)[res_type]}"), client.get(res_type),
                     client.request("POST", f"{res_type}/_search", data={})):
        assert response.status_code == 403
        assert response.json()["issue"][0]["code"] == "forbidden"
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_v2_read_and_search_letters_are_enforced_separately(secured: InProcessEngine, r4_schema: R4Schema) -> None:
    reader, searcher = _client(secured, r4_schema, "study-read-only"), _client(secured, r4_schema, "study-search-only")
    assert reader.get(f"ImagingStudy/{UID}").status_code == 200
    assert reader.get(f"ImagingStudy/{UID}/_history").status_code == 200
    assert reader.get("ImagingStudy").status_code == 403
    assert searcher.get("ImagingStudy").status_code == 200
    assert searcher.get(f"ImagingStudy/{UID}").status_code == 403
    assert searcher.get(f"ImagingStudy/{UID}/_history/1").status_code == 403


@pytest.mark.parametrize("token", ["all-v2", "all-v1"])
def test_v1_and_v2_wildcards_read_and_search_every_type(secured: InProcessEngine, r4_schema: R4Schema,
                                                        token: str) -> None:
    client = _client(secured, r4_schema, token)
    for res_type, res_id in _ids(secured).items():
        assert client.get(f"{res_type}/{res_id}").status_code == 200
        assert client.get(res_type).json()["total"] >= 1


def test_including_a_type_the_scope_lacks_is_403(secured: InProcessEngine, r4_schema: R4Schema) -> None:
    client = _client(secured, r4_schema, "study-only")
    assert client.get("ImagingStudy", params={"_include": "ImagingStudy:basedon"}).status_code == 403
    assert client.get("ImagingStudy", params={"_id": UID}).status_code == 200


def test_every_disclosure_is_audited_with_client_resources_and_peer(secured: InProcessEngine,
                                                                    r4_schema: R4Schema) -> None:
    before = len(_audit(secured))
    client = _client(secured, r4_schema, "all-v2")
    client.get(f"ImagingStudy/{UID}")
    client.get("ImagingStudy", params={"patient": "Patient/1", "_include": "ImagingStudy:patient"})
    _client(secured, r4_schema, "patient-only").get(f"ImagingStudy/{UID}")  # refused: nothing disclosed
    _client(secured, r4_schema, None).get("Patient/1")
    rows = _audit(secured)[before:]
    assert [(actor, action, kind, oid) for actor, action, kind, oid, _ in rows] == [
        ("pacs-viewer", "fhir.read", "ImagingStudy", UID),
        ("pacs-viewer", "fhir.search", "ImagingStudy", "Patient/1"),
    ]
    assert rows[0][4]["resources"] == [f"ImagingStudy/{UID}"] and rows[0][4]["client_id"] == "pacs-viewer"
    assert rows[0][4]["remote"].startswith("127.0.0.1:")
    assert rows[1][4]["resources"] == [f"ImagingStudy/{UID}", "Patient/1"]
    assert rows[1][4]["query"] == "patient=Patient/1&_include=ImagingStudy:patient"


@pytest.mark.parametrize("token", ["reports-v2", "reports-v1"])
def test_diagnostic_report_scopes_allow_reports_and_nothing_else(secured: InProcessEngine, r4_schema: R4Schema,
                                                                 token: str) -> None:
    client = _client(secured, r4_schema, token)
    for path in ("DiagnosticReport/1", "DiagnosticReport/1/_history/1", "DiagnosticReport/1/_history",
                 "DiagnosticReport"):
        assert client.get(path).status_code == 200, path
    assert client.get("DiagnosticReport", params={"_include": "DiagnosticReport:patient"}).status_code == 403
    assert client.get(f"ImagingStudy/{UID}").status_code == 403
    only_studies = _client(secured, r4_schema, "study-only")
    for path in ("DiagnosticReport/1/_history/1", "DiagnosticReport/1/_history"):
        assert only_studies.get(path).status_code == 403, path
    refused = only_studies.get("ImagingStudy", params={"_revinclude": "DiagnosticReport:imagingStudy"})
    assert refused.status_code == 403 and 'error="insufficient_scope"' in refused.headers["www-authenticate"]


def test_v2_search_letter_alone_does_not_read_reports(secured: InProcessEngine, r4_schema: R4Schema) -> None:
    searcher = _client(secured, r4_schema, "report-search-only")
    assert searcher.get("DiagnosticReport").status_code == 200
    for path in ("DiagnosticReport/1", "DiagnosticReport/1/_history/1", "DiagnosticReport/1/_history"):
        assert searcher.get(path).status_code == 403, path


def test_report_reads_vreads_and_histories_are_audited(secured: InProcessEngine, r4_schema: R4Schema) -> None:
    before = len(_audit(secured))
    client = _client(secured, r4_schema, "all-v2")
    client.get("DiagnosticReport/1")
    client.get("DiagnosticReport/1/_history/1")
    client.get("DiagnosticReport/1/_history")
    client.get("ImagingStudy", params={"_id": UID, "_revinclude": "DiagnosticReport:imagingStudy"})
    rows = _audit(secured)[before:]
    assert [(action, kind, oid, detail["resources"]) for _, action, kind, oid, detail in rows] == [
        ("fhir.read", "DiagnosticReport", "1", ["DiagnosticReport/1"]),
        ("fhir.vread", "DiagnosticReport", "1", ["DiagnosticReport/1/_history/1"]),
        ("fhir.history", "DiagnosticReport", "1", ["DiagnosticReport/1/_history/2", "DiagnosticReport/1/_history/1"]),
        ("fhir.search", "ImagingStudy", "", [f"ImagingStudy/{UID}", "DiagnosticReport/1"]),
    ]


def test_no_phi_in_info_logs(secured: InProcessEngine, r4_schema: R4Schema, caplog: pytest.LogCaptureFixture) -> None:
    client = _client(secured, r4_schema, "all-v2")
    with caplog.at_level(logging.INFO):
        client.get("Patient", params={"identifier": "AUTH1", "name": "SECRET"})
        client.get("Patient", params={"identifier": "AUTH1", "birthdate": "not-a-date-AUTH1"})
        client.get("Patient/1")
        _client(secured, r4_schema, None).get("Patient", params={"identifier": "AUTH1"})
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))  # the client's
    assert "AUTH1" not in logged and "SECRET" not in logged.upper() and "SALLY" not in logged.upper()


def test_every_concurrent_read_has_its_audit_row_before_its_answer(secured: InProcessEngine) -> None:
    """Reads on 8 connections at once (their audit rows are group-committed): when the k-th answer on a
    connection arrives, k rows name that connection's address."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    before = len(_audit(secured))
    statuses: list[int] = []
    late: list[str] = []
    url = urlsplit(secured.base)

    def reads() -> None:
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
        conn.connect()
        remote = f"127.0.0.1:{conn.sock.getsockname()[1]}"
        for k in range(1, 7):
            conn.request("GET", f"{url.path}/ImagingStudy/{UID}", headers={"Authorization": "Bearer all-v2"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            if sum(r[4].get("remote") == remote for r in _audit(secured)[before:]) < k:
                late.append(f"{remote} answer {k}")
        conn.close()

    threads = [threading.Thread(target=reads) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    rows = _audit(secured)[before:]
    assert statuses == [200] * 48 and late == []
    assert len(rows) == 48 and len({r[4]["remote"] for r in rows}) == 8
    assert {(r[0], r[1], r[2], r[3]) for r in rows} == {("pacs-viewer", "fhir.read", "ImagingStudy", UID)}
    assert all(r[4]["resources"] == [f"ImagingStudy/{UID}"] for r in rows)


@pytest.mark.parametrize("res_type", TYPES)
def test_type_history_needs_a_token_and_the_read_scope_of_its_type(secured: InProcessEngine, r4_schema: R4Schema,
                                                                    res_type: str) -> None:
    assert _client(secured, r4_schema, None).get(f"{res_type}/_history").status_code == 401
    other = "patient-only" if res_type != "Patient" else "study-only"
    refused = _client(secured, r4_schema, other).get(f"{res_type}/_history")
    assert refused.status_code == 403 and refused.json()["issue"][0]["code"] == "forbidden"
    assert _client(secured, r4_schema, "all-v1").get(f"{res_type}/_history").status_code == 200


def test_system_history_needs_read_on_every_type(secured: InProcessEngine, r4_schema: R4Schema) -> None:
    assert _client(secured, r4_schema, None).get("_history").status_code == 401
    for token in ("study-only", "reports-v2", "study-search-only"):
        assert _client(secured, r4_schema, token).get("_history").status_code == 403, token
    for token in ("all-v2", "all-v1"):
        bundle = _client(secured, r4_schema, token).get("_history")
        assert bundle.status_code == 200 and bundle.json()["type"] == "history"
    assert _client(secured, r4_schema, "study-read-only").get("ImagingStudy/_history").status_code == 200
    assert _client(secured, r4_schema, "study-search-only").get("ImagingStudy/_history").status_code == 403


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("nonsense", 401), ("study-read-only", 403)])
def test_a_search_body_is_not_read_before_the_caller_is_admitted(secured: InProcessEngine, token: str | None,
                                                                  status: int) -> None:
    # The body of a POST _search was read (up to 1,000 fields of 1 MB each) before the token was looked at:
    # anybody could make the engine buffer it, and a client announcing a large body waited for the body
    # timeout (408) instead of its 401. Now the answer comes at once, from the head alone.
    import socket

    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with socket.create_connection(("127.0.0.1", secured.http_port), timeout=10) as sock:
        sock.sendall(f"POST /fhir/ImagingStudy/_search HTTP/1.1\r\nHost: x\r\n{auth}"
                     "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 50000000\r\n\r\n"
                     "status=".encode())
        sock.settimeout(5)
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith(f"HTTP/1.1 {status} "), head
    assert "WWW-Authenticate: Bearer" in head.replace("www-authenticate", "WWW-Authenticate")
