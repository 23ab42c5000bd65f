"""Fixtures for DICOM tests: a migrated database, a running radbridge AE, DCMTK helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from channels.dicom.server import DicomServer, start_dicom_server
from engine.config.models import EngineConfig
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.store.database import Database
from tests.conftest import need


def _dcmtk_path() -> str:
    """PATH without this interpreter's bin directory: pynetdicom installs its own ``findscu``,
    ``storescu`` … there, and an activated virtualenv would otherwise run those instead of DCMTK."""
    ours = os.path.dirname(sys.executable)
    return os.pathsep.join(d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d and d != ours)


DCMTK = all(shutil.which(t, path=_dcmtk_path()) for t in ("findscu", "wlmscpfs", "dump2dcm"))


@pytest.fixture
def dcmtk() -> None:
    """Skip (fail under RADBRIDGE_REQUIRE_PEERS=1) without DCMTK."""
    need(DCMTK, "DCMTK (findscu, wlmscpfs, dump2dcm) not installed")


needs_dcmtk = pytest.mark.usefixtures("dcmtk")


def dcmtk_env() -> dict[str, str]:
    """The environment for every DCMTK process (TCP_NODELAY, see PEERS.md)."""
    return {**os.environ, "TCP_NODELAY": "1", "PATH": _dcmtk_path()}


def findscu(
    port: int, keys: list[str], out: Path, aec: str = "RADBRIDGE", aet: str = "CT1"
) -> list[Dataset]:
    """Run ``findscu -W`` with ``-k`` keys; return the responses it wrote, in order."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [
        "findscu",
        "-W",
        "-aet",
        aet,
        "-aec",
        aec,
        "-X",
        "-od",
        str(out),
        "127.0.0.1",
        str(port),
    ]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"findscu exited {done.returncode}: {done.stderr[-2000:]}"
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@dataclass
class Radbridge:
    """A running radbridge DICOM service over a fresh database."""

    db: Database
    config: EngineConfig
    server: DicomServer
    orders: OrdersHandler
    patients: PatientsHandler


def make_config(tmp_path: Path, **sections: Any) -> EngineConfig:
    base: dict[str, Any] = {
        "data_dir": tmp_path,
        "mappings_dir": tmp_path / "mappings",
        "dicom": {"port": 0, "ae_title": "RADBRIDGE"},
    }
    return EngineConfig.model_validate(base | sections)


@pytest.fixture
def radbridge(tmp_path: Path) -> Iterator[Radbridge]:
    """radbridge's MWL + MPPS SCP on a free port, status messages to destination ``ris``."""
    config = make_config(tmp_path, mpps={"status_destination": "ris"})
    db = Database(f"sqlite:///{tmp_path / 'rb.db'}", sqlite_synchronous="NORMAL")
    db.migrate()
    server = start_dicom_server(config, db)
    yield Radbridge(
        db,
        config,
        server,
        OrdersHandler(order_policy(config)),
        PatientsHandler(patient_policy(config)),
    )
    server.stop()
    db.close()
