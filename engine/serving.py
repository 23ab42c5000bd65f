"""Where a configuration listens and sends, and what the running engine actually bound.

``radbridge status`` runs in an operator's shell, whose environment need not be the engine's (the
engine started with ``RADBRIDGE_DICOM_PORT=11113`` by a service manager, ``status`` run in a login
shell or through ``sudo``). Read from the configuration alone it showed the shell's ports beside
"engine: running". The engine therefore writes what it serves, with the ports as bound (a
configured port 0 included), to ``radbridge.serving.json`` in its data directory (owner-only) once
everything listens and after each reload, and removes it when it stops; ``status`` shows that file
when the engine that wrote it is the one running.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from engine.config import Config

__all__ = ["SERVING_FILE", "endpoints", "read_serving", "remove_serving", "write_serving"]

SERVING_FILE = "radbridge.serving.json"


def _address(host: str, port: int) -> str:
    return f"{host}:{port}" if port else f"{host}:(a free port chosen at start)"


def _target(dest: Any) -> str:
    url = getattr(dest, "url", None)
    if url:
        return str(url)
    host = getattr(dest, "host", "") or ""
    return f"{host}:{getattr(dest, 'port', '')}" if host else "off"


def _destinations(config: Config) -> dict[str, str]:
    """Every configured destination name → where it sends ("off" when it has no address)."""
    eng = config.engine
    found = [*eng.destinations, *(d for ch in config.channels for d in ch.destinations)]
    out = {d.name: _target(d) for d in found}
    out |= {r.name: r.mllp or r.destination or "off" for r in eng.reports.receivers}
    return out


def endpoints(config: Config, dicom_port: int | None = None, http_port: int | None = None,
              mllp_ports: dict[str, int] | None = None) -> dict[str, Any]:
    """The DICOM listener, FHIR API, channel listeners and destinations of ``config``; the ports given
    (the bound ones) replace the configured ones."""
    eng = config.engine
    dicom = ({"ae_title": eng.dicom.ae_title, "listen": _address(eng.dicom.host, dicom_port or eng.dicom.port),
              "tls": eng.dicom.tls is not None, "receive_processes": eng.dicom.receive_processes}
             if eng.dicom.enabled else None)
    http = eng.http
    scheme = "https" if http.tls else "http"
    fhir = ({"url": f"{scheme}://{_address(http.host, http_port or http.port)}/fhir", "auth": http.auth}
            if http.enabled else None)
    ports = mllp_ports or {}
    listeners = {ch.name: {"listen": _address(ch.source.host, ports.get(ch.name) or ch.source.port)
                           if ch.enabled else "disabled", "file": str(config.channel_files[ch.name])}
                 for ch in config.channels}
    # Where C-STORE spools and stores (archive.primary's file system) and the free space it keeps: status
    # compares them (a full disk refuses every image with 0xA700).
    space = ({"directory": str(Path(eng.archive_dir()).absolute()), "min_free_bytes": eng.archive.min_free_bytes}
             if eng.dicom.enabled else None)
    return {"dicom": dicom, "fhir": fhir, "listeners": listeners, "destination_targets": _destinations(config),
            "archive_space": space}


def write_serving(data_dir: Path, served: dict[str, Any]) -> None:
    """Replace the serving file with ``served`` and this process's pid (owner-only, written whole)."""
    path = Path(data_dir) / SERVING_FILE
    part = path.with_name(f".{SERVING_FILE}.{os.getpid()}")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"pid": os.getpid(), **served}, out)
    os.replace(part, path)


def read_serving(data_dir: Path, pid: int | None) -> dict[str, Any] | None:
    """What the engine with ``pid`` wrote it serves; None without a running engine or a file of its own."""
    if pid is None:
        return None
    try:
        found = json.loads((Path(data_dir) / SERVING_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("pid") == pid else None


def remove_serving(data_dir: Path) -> None:
    """Remove the serving file (the engine stops)."""
    with contextlib.suppress(OSError):
        (Path(data_dir) / SERVING_FILE).unlink()
