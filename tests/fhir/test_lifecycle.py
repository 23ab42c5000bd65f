"""The HTTP listener's life in the engine: start, reload, stop, a port in use, TLS, bounded connections."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest

from engine.config import load_config
from engine.errors import ConfigError
from tests.fhir.conftest import InProcessEngine
from tests.pki import make_pki


def _run(engine: InProcessEngine, coro: object) -> object:
    return asyncio.run_coroutine_threadsafe(coro, engine.loop).result(timeout=60)  # type: ignore[arg-type]


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_the_api_survives_a_reload_and_stops_with_the_engine(tmp_path: Path) -> None:
    engine = InProcessEngine(tmp_path)
    engine.start()
    try:
        assert httpx.get(f"{engine.base}/metadata", timeout=10).status_code == 200
        assert engine.runtime is not None
        _run(engine, engine.runtime.reload(load_config(tmp_path / "config")))
        assert httpx.get(f"{engine.base}/metadata", timeout=10).status_code == 200
        changed = engine.write_config(", max_connections: 3")
        with pytest.raises(ConfigError, match="http"):
            _run(engine, engine.runtime.reload(load_config(changed)))
        assert httpx.get(f"{engine.base}/Endpoint/dicomweb", timeout=10).status_code == 200
    finally:
        engine.stop()
    assert _refused(engine.http_port)


def test_a_port_in_use_is_a_located_configuration_error(tmp_path: Path) -> None:
    engine = InProcessEngine(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", engine.http_port))
        holder.listen()
        with pytest.raises(ConfigError, match=r"engine.yaml:\d+.*http.*port.*cannot listen"):
            engine.start()
    engine.loop.call_soon_threadsafe(engine.loop.stop)
    assert _refused(engine.mllp_port)  # whatever had started was stopped again


def test_https_with_the_listeners_tls_settings(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    engine = InProcessEngine(tmp_path)
    engine.start(f", tls: {{cert_file: {pki / 'server.pem'}, key_file: {pki / 'server.key'}}}")
    try:
        https = engine.base.replace("http://", "https://")
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        response = httpx.get(f"{https}/metadata", verify=context, timeout=10)
        assert response.status_code == 200 and response.json()["implementation"]["url"].startswith("https://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{engine.base}/metadata", timeout=5)  # plain HTTP on the TLS port
    finally:
        engine.stop()


def test_connections_beyond_the_limit_get_503(tmp_path: Path) -> None:
    engine = InProcessEngine(tmp_path)
    engine.start(", max_connections: 2")
    idle = [socket.create_connection(("127.0.0.1", engine.http_port)) for _ in range(2)]
    try:
        time.sleep(0.3)
        response = httpx.get(f"{engine.base}/metadata", timeout=10)
        assert response.status_code == 503
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    try:
        assert httpx.get(f"{engine.base}/metadata", timeout=10).status_code == 200
    finally:
        engine.stop()
