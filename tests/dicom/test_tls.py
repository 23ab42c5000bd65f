"""DICOM over TLS (PS3.15 B.1): worklist and MPPS with pynetdicom and DCMTK findscu as clients.

A throw-away CA signs the server's and the client's certificates; a second,
unrelated CA signs a "rogue" client certificate. With ``require_client_cert``
the listener refuses clients without a certificate and clients whose
certificate another CA signed; a client that trusts another CA refuses the server.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import select

from channels.dicom.server import start_dicom_server
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.tables import procedure_steps
from engine.store.database import Database
from tests.pki import make_pki

from ..domain.factories import apply_records, order, patient
from .conftest import Radbridge, dcmtk_env, make_config, needs_dcmtk
from .mpps_datasets import n_create_dataset, n_set_dataset

MWL = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ca`` with ``server`` and ``client``; ``rogue/`` holds another CA and its ``client``."""
    root = tmp_path_factory.mktemp("pki")
    make_pki(root)
    make_pki(root / "rogue", ca="rogue-ca", leaves=("client",))
    return root


def _serve(tmp_path: Path, pki: Path, require_client_cert: bool = True) -> Radbridge:
    tls = {"cert_file": pki / "server.pem", "key_file": pki / "server.key",
           "ca_file": pki / "ca.pem", "require_client_cert": require_client_cert}  # fmt: skip
    config = make_config(tmp_path, dicom={"port": 0, "ae_title": "RADBRIDGE", "tls": tls})
    db = Database(f"sqlite:///{tmp_path / 'rb.db'}", sqlite_synchronous="NORMAL")
    db.migrate()
    rb = Radbridge(db, config, start_dicom_server(config, db), OrdersHandler(order_policy(config)),
                   PatientsHandler(patient_policy(config)))  # fmt: skip
    apply_records(db, rb.orders, [patient("P1"), order(
        "PL1", accession_number="ACC1", scheduled_procedure_step_id="SPS1", study_instance_uid="1.2.3.1",
    )])  # fmt: skip
    return rb


@pytest.fixture
def mutual(tmp_path: Path, pki: Path) -> Iterator[Radbridge]:
    """radbridge requiring client certificates signed by ``ca``."""
    rb = _serve(tmp_path, pki)
    yield rb
    rb.server.stop()
    rb.db.close()


def _client_context(pki: Path, cert: Path | None = None, ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca or pki / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(cert.with_suffix(".pem")), str(cert.with_suffix(".key")))
    return ctx


def _associate(port: int, ctx: ssl.SSLContext | None, *contexts: str) -> Any:
    ae = AE(ae_title="CT1")
    ae.acse_timeout = ae.network_timeout = 10
    for sop in contexts:
        ae.add_requested_context(sop)
    tls = (ctx, "localhost") if ctx is not None else None
    return ae.associate("127.0.0.1", port, ae_title="RADBRIDGE", tls_args=tls)


def _query() -> Dataset:
    ds = Dataset()
    ds.AccessionNumber, ds.PatientID = "", ""
    return ds


def _find(assoc: Any) -> list[str]:
    found = [str(ds.AccessionNumber) for status, ds in assoc.send_c_find(_query(), MWL)
             if status and status.Status in (0xFF00, 0xFF01) and ds is not None]  # fmt: skip
    assoc.release()
    return found


def test_worklist_query_over_mutual_tls(mutual: Radbridge, pki: Path) -> None:
    assoc = _associate(mutual.server.port, _client_context(pki, pki / "client"), MWL)
    assert assoc.is_established
    assert _find(assoc) == ["ACC1"]


def test_mpps_over_mutual_tls(mutual: Radbridge, pki: Path) -> None:
    assoc = _associate(mutual.server.port, _client_context(pki, pki / "client"), MPPS)
    assert assoc.is_established
    created, _ = assoc.send_n_create(n_create_dataset(), MPPS, "1.2.826.0.1.3680043.8.498.77")
    completed, _ = assoc.send_n_set(n_set_dataset("COMPLETED"), MPPS, "1.2.826.0.1.3680043.8.498.77")
    assoc.release()
    assert (created.Status, completed.Status) == (0x0000, 0x0000)
    status = mutual.db.read(lambda c: c.execute(select(procedure_steps.c.status)).scalar_one())
    assert status == "COMPLETED"


def test_a_silent_client_does_not_hold_up_the_others(mutual: Radbridge, pki: Path) -> None:
    """The TLS handshake runs in the connection's own thread, not in the one that accepts."""
    silent = socket.create_connection(("127.0.0.1", mutual.server.port))
    try:
        started = time.monotonic()
        assoc = _associate(mutual.server.port, _client_context(pki, pki / "client"), MWL)
        assert assoc.is_established
        assert _find(assoc) == ["ACC1"]
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def test_client_without_certificate_is_refused(mutual: Radbridge, pki: Path) -> None:
    assoc = _associate(mutual.server.port, _client_context(pki), MWL)
    assert not assoc.is_established


def test_client_certificate_from_another_ca_is_refused(mutual: Radbridge, pki: Path) -> None:
    assoc = _associate(mutual.server.port, _client_context(pki, pki / "rogue" / "client"), MWL)
    assert not assoc.is_established


def test_plain_tcp_on_the_tls_port_gets_no_association(mutual: Radbridge) -> None:
    assoc = _associate(mutual.server.port, None, MWL)
    assert not assoc.is_established


def test_server_authenticated_tls_without_client_certificates(tmp_path: Path, pki: Path) -> None:
    rb = _serve(tmp_path, pki, require_client_cert=False)
    try:
        assoc = _associate(rb.server.port, _client_context(pki), MWL)
        assert assoc.is_established
        assert _find(assoc) == ["ACC1"]
    finally:
        rb.server.stop()
        rb.db.close()


def _findscu_tls(port: int, tls: list[str], out: Path) -> subprocess.CompletedProcess[bytes]:
    """``findscu -W`` over TLS (DCMTK's options: ``+tls key cert``, ``+tla``, ``+cf ca``)."""
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", "-W", "-aet", "CT1", "-aec", "RADBRIDGE", "-to", "10", "-ta", "10", "-td", "10",
            *tls, "-X", "-od", str(out), "-k", "AccessionNumber=", "-k", "PatientID=",
            "127.0.0.1", str(port)]  # fmt: skip
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, timeout=60)


@needs_dcmtk
def test_findscu_over_mutual_tls(mutual: Radbridge, pki: Path, tmp_path: Path) -> None:
    tls = ["+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem")]
    done = _findscu_tls(mutual.server.port, tls, tmp_path / "out")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    from pydicom import dcmread

    answers = [dcmread(p) for p in sorted((tmp_path / "out").glob("rsp*.dcm"))]
    assert [(a.AccessionNumber, a.PatientID) for a in answers] == [("ACC1", "P1")]


@needs_dcmtk
@pytest.mark.parametrize(
    "case",
    ["anonymous client", "client signed by another CA", "server from an unknown CA"],
)
def test_findscu_refused(mutual: Radbridge, pki: Path, tmp_path: Path, case: str) -> None:
    rogue = pki / "rogue"
    tls = {
        "anonymous client": ["+tla", "+cf", str(pki / "ca.pem")],
        "client signed by another CA": ["+tls", str(rogue / "client.key"), str(rogue / "client.pem"),
                                        "+cf", str(pki / "ca.pem")],
        "server from an unknown CA": ["+tls", str(pki / "client.key"), str(pki / "client.pem"),
                                      "+cf", str(rogue / "rogue-ca.pem")],
    }[case]  # fmt: skip
    done = _findscu_tls(mutual.server.port, tls, tmp_path / "out")
    assert done.returncode != 0
    assert not list((tmp_path / "out").glob("rsp*.dcm"))
