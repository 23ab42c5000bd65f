"""The shipped ``http.auth: smart``: engine.auth's token endpoint and bearer checks guard the FHIR API.

A client registered with ``radbridge clients add`` gets a token from ``/auth/token`` with its
secret (authlib's OAuth2 client, not ours) and reads what its scope allows, nothing more.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.cli.main import main as cli
from engine.config import load_config
from engine.runtime import Runtime

from .conftest import InProcessEngine
from .messages import adt, orm

UID = "1.2.826.0.1.3680043.10.999.701"


@pytest.fixture(scope="module")
def smart_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InProcessEngine, dict[str, str]]]:
    running = InProcessEngine(tmp_path_factory.mktemp("smart"))
    config_dir = running.write_config()
    engine_yaml = config_dir / "engine.yaml"
    engine_yaml.write_text(engine_yaml.read_text().replace("auth: development-no-auth", "auth: smart"))
    client = _register(config_dir)
    threading.Thread(target=running.loop.run_forever, daemon=True).start()
    running.runtime = Runtime(load_config(config_dir))
    asyncio.run_coroutine_threadsafe(running.runtime.start(), running.loop).result(timeout=60)
    assert running.send(adt("A04", "SW1", "SMART^ANN"), orm(701, "SW1", study_uid=UID)) == ["AA", "AA"]
    running.settle()
    yield running, client
    running.stop()


def _register(config_dir: Path) -> dict[str, str]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["--config", str(config_dir), "clients", "add", "ehr", "--scope", "system/ImagingStudy.rs",
                    "--secret", "--json"]) == 0
    return json.loads(out.getvalue())


def _token(base: str, client: dict[str, str], scope: str) -> httpx.Response:
    from authlib.integrations.httpx_client import OAuth2Client

    oauth = OAuth2Client(client["client_id"], client["client_secret"], scope=scope,
                         token_endpoint_auth_method="client_secret_basic")
    try:
        oauth.fetch_token(f"{base}/auth/token", grant_type="client_credentials")
        return httpx.Response(200, json=dict(oauth.token))
    finally:
        oauth.close()


def test_the_smart_configuration_names_the_token_endpoint(smart_engine: tuple[InProcessEngine, dict[str, str]]) -> None:
    engine, _ = smart_engine
    conf = httpx.get(f"{engine.base}/.well-known/smart-configuration").json()
    assert conf["token_endpoint"] == f"http://127.0.0.1:{engine.http_port}/auth/token"
    assert "client_credentials" in conf["grant_types_supported"]


def test_a_registered_client_reads_what_its_scope_allows(smart_engine: tuple[InProcessEngine, dict[str, str]]) -> None:
    engine, client = smart_engine
    root = f"http://127.0.0.1:{engine.http_port}"
    token = _token(root, client, "system/ImagingStudy.rs").json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    found = httpx.get(f"{engine.base}/ImagingStudy", params={"identifier": f"urn:oid:{UID}"}, headers=bearer)
    assert found.status_code == 200, found.text
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [UID]
    assert httpx.get(f"{engine.base}/ImagingStudy/{UID}", headers=bearer).status_code == 200
    refused = httpx.get(f"{engine.base}/Patient", headers=bearer)
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    assert "insufficient_scope" in refused.headers["WWW-Authenticate"]


def test_no_token_or_a_forged_one_is_401(smart_engine: tuple[InProcessEngine, dict[str, str]]) -> None:
    engine, _ = smart_engine
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        answer = httpx.get(f"{engine.base}/ImagingStudy/{UID}", headers=headers)
        assert answer.status_code == 401 and answer.json()["resourceType"] == "OperationOutcome"
    assert httpx.get(f"{engine.base}/metadata").status_code == 200


def test_a_wrong_secret_gets_no_token(smart_engine: tuple[InProcessEngine, dict[str, str]]) -> None:
    engine, client = smart_engine
    answer = httpx.post(f"http://127.0.0.1:{engine.http_port}/auth/token",
                        data={"grant_type": "client_credentials", "scope": "system/ImagingStudy.rs"},
                        auth=(client["client_id"], "wrong"))
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


def test_a_client_registered_for_binary_reads_report_documents(
        smart_engine: tuple[InProcessEngine, dict[str, str]]) -> None:
    """fhirfix6: a backend client that registers and asks for system/Binary.read (the scope for fetching a
    presentedForm.url) got a token but a 403 for every document (only DiagnosticReport read admitted it)."""
    import base64
    import contextlib
    import io

    from sqlalchemy import select

    from engine.fhir.tables import fhir_resources
    from engine.store.schema import audit_events

    from .messages import oru

    engine, _ = smart_engine
    assert engine.runtime is not None and engine.runtime.db is not None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["--config", str(engine.root / "config"), "clients", "add", "documents", "--scope",
                    "system/Binary.read", "--secret", "--json"]) == 0
    client = json.loads(out.getvalue())
    pdf = b"%PDF-1.4\nsmart binary\n%%EOF\n"
    obx = f"OBX|2|ED|PDF^Report PDF||^AP^PDF^Base64^{base64.b64encode(pdf).decode()}||||||F"
    assert engine.report(oru(701, "SW1-R1", "F", "No acute finding.").rstrip("\r") + "\r" + obx + "\r") == ["AA"]
    engine.settle()
    report = engine.runtime.db.read(lambda c: c.execute(select(fhir_resources.c.res_id).where(
        fhir_resources.c.res_type == "DiagnosticReport")).scalar_one())
    root = f"http://127.0.0.1:{engine.http_port}"
    granted = _token(root, client, "system/Binary.read").json()
    assert granted["scope"] == "system/Binary.read"
    bearer = {"Authorization": f"Bearer {granted['access_token']}"}
    document = httpx.get(f"{engine.base}/Binary/report-{report}-1-1", headers=bearer)
    assert document.status_code == 200 and document.content == pdf, document.text
    assert httpx.get(f"{engine.base}/DiagnosticReport/{report}", headers=bearer).status_code == 403
    actors = engine.runtime.db.read(lambda c: c.execute(select(audit_events.c.actor).where(
        audit_events.c.object_type == "Binary")).scalars().all())
    assert actors == [client["client_id"]]
