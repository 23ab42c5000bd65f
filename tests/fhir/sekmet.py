"""sekmet-fhir (a FHIR R4 server from PyPI, installed by ``make peers`` into .peers/sekmet) as a test peer.

It runs in its own process on a free loopback port, with SMART client-credentials auth
on (it enforces bearer tokens and their scopes) or off. ``stop()``/``start()`` keep its
data directory, so a test can take it away and bring it back.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tests.conftest import ROOT, free_port, need, wait_for_port

SEKMET = ROOT / ".peers" / "sekmet" / "bin" / "uvicorn"
CLIENT_ID = "radbridge-push"
CLIENT_SECRET = "push-secret-for-tests"


@dataclass
class Sekmet:
    """One sekmet-fhir process; ``client_credentials``: its token endpoint and token checks are on."""

    root: Path
    client_credentials: bool = True
    token_lifetime: int = 3600
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth/token"

    def _settings(self) -> Path:
        auth = "server_auth: {types: [none]}\n"
        if self.client_credentials:
            auth = (f"server_auth:\n  types: [smart]\n  token_lifetime: {self.token_lifetime}\n  smart_clients:\n"
                    f"    - {{client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}, scopes: 'system/*.*'}}\n")
        path = self.root / "settings.yaml"
        path.write_text(f"base_url: {self.base}\nhost: 127.0.0.1\nport: {self.port}\ndata_dir: {self.root / 'data'}\n"
                        f"simulator: {{enabled: false}}\nlog_inbound: false\n{auth}")
        return path

    def start(self) -> None:
        need(SEKMET.exists(), "sekmet-fhir is not installed (make peers installs it into .peers/sekmet)")
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SEKMET_CONFIG": str(self._settings())}
        with open(self.root / "sekmet.log", "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen([str(SEKMET), "sekmet.main:app_factory", "--factory", "--host", "127.0.0.1",
                                          "--port", str(self.port), "--no-access-log"], cwd=self.root, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, proc=self.proc, timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def rotate_signing_key(self) -> None:
        """Make every token it issued so far invalid (as an EHR rotating its keys does): stop, new key, start."""
        self.stop()
        with sqlite3.connect(self.root / "data" / "sekmet.db") as db:
            db.execute("DELETE FROM kv WHERE k = 'jwt_secret'")
        self.start()

    def token(self) -> str:
        response = httpx.post(self.token_url, data={"grant_type": "client_credentials"},
                              auth=(CLIENT_ID, CLIENT_SECRET), timeout=30)
        response.raise_for_status()
        return str(response.json()["access_token"])

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"} if self.client_credentials else {}

    def search(self, res_type: str, system: str, value: str) -> list[dict[str, Any]]:
        """The resources of ``res_type`` with identifier ``system|value`` on the server."""
        response = httpx.get(f"{self.base}/{res_type}?identifier={quote(f'{system}|{value}', safe='')}",
                             headers=self.headers(), timeout=30)
        response.raise_for_status()
        return [e["resource"] for e in response.json().get("entry", [])]

    def read(self, reference: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/{reference}", headers=self.headers(), timeout=30)
        response.raise_for_status()
        return dict(response.json())

    def create(self, resource: dict[str, Any]) -> str:
        """POST ``resource`` (a plain create, no condition); its id."""
        response = httpx.post(f"{self.base}/{resource['resourceType']}", json=resource,
                              headers={**self.headers(), "Content-Type": "application/fhir+json"}, timeout=30)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])
