"""Idle, half-negotiated and vanished connections against good senders (PS3.8 9.1.5 ARTIM).

Attackers are raw sockets from 127.0.0.2 (another calling host on the loopback
network); the good senders, from 127.0.0.1, are DCMTK ``echoscu``/``findscu`` and
pynetdicom (C-ECHO, MPPS N-CREATE). Each good exchange must finish within a few
seconds while the attackers hold their connections.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE

from channels.dicom.server import start_dicom_server
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.store.database import Database

from ..domain.factories import apply_records, order, patient
from .conftest import Radbridge, dcmtk_env, findscu, make_config, needs_dcmtk
from .mpps_datasets import MPPS, n_create_dataset

ATTACKER = "127.0.0.2"
VERIFICATION = "1.2.840.10008.1.1"
#: An A-ASSOCIATE-RQ PDU header announcing 200 bytes, followed by 2 of them.
PARTIAL_RQ = b"\x01\x00" + struct.pack(">I", 200) + b"\x00\x01"
#: Seconds a good sender may take while the attackers hold their connections.
GOOD_WITHIN = 5.0


def _serve(tmp_path: Path, **dicom: Any) -> Radbridge:
    config = make_config(tmp_path, dicom={"port": 0, "ae_title": "RADBRIDGE", **dicom})
    db = Database(f"sqlite:///{tmp_path / 'rb.db'}", sqlite_synchronous="NORMAL")
    db.migrate()
    rb = Radbridge(db, config, start_dicom_server(config, db), OrdersHandler(order_policy(config)),
                   PatientsHandler(patient_policy(config)))  # fmt: skip
    apply_records(db, rb.orders, [patient("P1"), order("PL1", accession_number="ACC1",
                                                       scheduled_procedure_step_id="SPS1",
                                                       study_instance_uid="1.2.3.1")])  # fmt: skip
    return rb


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    started: list[Radbridge] = []

    def serve(**dicom: Any) -> Radbridge:
        started.append(_serve(tmp_path, **dicom))
        return started[-1]

    yield serve
    for rb in started:
        rb.server.stop()
        rb.db.close()


def _attack(port: int, count: int, payload: bytes = b"", source: str = ATTACKER) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        if payload:
            sock.sendall(payload)
        socks.append(sock)
    return socks


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server ends the connection (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _wait_for(condition: Any, within: float = GOOD_WITHIN) -> None:
    deadline = time.monotonic() + within
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def _holding(rb: Radbridge) -> bool:
    """True while the listener still counts a connection (its host slot or its association thread)."""
    return bool(rb.server.guard.open_count() or rb.server.server.active_associations)


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def _echo(port: int) -> bool:
    ae = AE(ae_title="CT1")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0x0000


def _mpps_create(port: int, uid: str) -> int:
    ae = AE(ae_title="CT1")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(MPPS)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    status, _ = assoc.send_n_create(n_create_dataset(), MPPS, uid)
    assoc.release()
    return int(status.Status)


def _echoscu(port: int) -> subprocess.CompletedProcess[str]:
    args = ["echoscu", "-aet", "CT1", "-aec", "RADBRIDGE", "-to", "10", "-ta", "10", "127.0.0.1", str(port)]
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=30)


@needs_dcmtk
def test_good_senders_work_while_one_host_holds_twenty_idle_connections(
    served: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rb = served(max_associations=6, max_associations_per_host=3, artim_timeout_seconds=60)
    caplog.set_level(logging.WARNING, logger="channels.dicom.listener")
    held = _attack(rb.server.port, 20)
    try:
        refused = [s for s in held if _closed_by_server(s, 0.5)]
        assert len(refused) == 17  # beyond the host's 3, closed at once
        assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == [
            "DICOM connection from 127.0.0.2 refused (1 since the last report): it holds 3 connections"
            " (dicom.max_associations_per_host)"
        ]
        started = time.monotonic()
        assert shutil.which("echoscu", path=dcmtk_env()["PATH"])
        echo = _echoscu(rb.server.port)
        assert echo.returncode == 0, echo.stderr
        found = findscu(rb.server.port, ["AccessionNumber=", "PatientID="], tmp_path / "out")
        assert [d.AccessionNumber for d in found] == ["ACC1"]
        assert _mpps_create(rb.server.port, "1.2.826.0.1.3680043.8.498.101") == 0x0000
        assert time.monotonic() - started < 3 * GOOD_WITHIN
        assert not any(_closed_by_server(s, 0.01) for s in held if s not in refused)  # still held
    finally:
        _close_all(held)


def test_half_negotiated_connections_are_cut_when_artim_expires(served: Any) -> None:
    rb = served(max_associations=4, max_associations_per_host=10, artim_timeout_seconds=1)
    held = _attack(rb.server.port, 2, PARTIAL_RQ) + _attack(rb.server.port, 2)
    try:
        started = time.monotonic()
        assert all(_closed_by_server(s, 1 + GOOD_WITHIN) for s in held)
        assert time.monotonic() - started < 1 + GOOD_WITHIN
        assert _echo(rb.server.port)
    finally:
        _close_all(held)


def test_good_senders_get_slots_while_half_negotiated_connections_wait_for_artim(served: Any) -> None:
    rb = served(max_associations=4, max_associations_per_host=2, artim_timeout_seconds=60)
    held = _attack(rb.server.port, 4, PARTIAL_RQ)
    try:
        started = time.monotonic()
        assert _echo(rb.server.port)
        assert _mpps_create(rb.server.port, "1.2.826.0.1.3680043.8.498.102") == 0x0000
        assert time.monotonic() - started < GOOD_WITHIN
    finally:
        _close_all(held)


def test_a_slot_is_free_as_soon_as_its_peer_is_gone(served: Any) -> None:
    rb = served(max_associations=2, max_associations_per_host=2, artim_timeout_seconds=60)
    gone = _attack(rb.server.port, 2, PARTIAL_RQ, source="127.0.0.1")
    _wait_for(lambda: rb.server.guard.open_count() == 2)  # both accepted, then the peers vanish
    _close_all(gone)
    _wait_for(lambda: not _holding(rb))
    assert not _holding(rb)
    assert _echo(rb.server.port)
    assert _echo(rb.server.port)


def test_a_peer_resetting_mid_pdu_is_one_info_line(served: Any, caplog: pytest.LogCaptureFixture) -> None:
    rb = served(artim_timeout_seconds=60)
    caplog.set_level(logging.INFO)
    (sock,) = _attack(rb.server.port, 1, PARTIAL_RQ)
    _wait_for(lambda: rb.server.guard.open_count() == 1)
    time.sleep(0.3)  # the reactor is now waiting for the rest of the PDU
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    _wait_for(lambda: not _holding(rb))
    dicom = [r for r in caplog.records if r.name.startswith(("pynetdicom", "channels.dicom"))]
    assert [r for r in dicom if r.levelno >= logging.WARNING or r.exc_info] == []
    assert [r.getMessage() for r in dicom if r.name == "pynetdicom.dul"] == [
        "DICOM connection reset or timed out while reading a PDU"
    ]


def _association_request() -> bytes:
    """The A-ASSOCIATE-RQ PDU pynetdicom sends for Verification, captured on a socket of our own."""
    listener = socket.create_server(("127.0.0.1", 0))
    captured: list[bytes] = []

    def capture() -> None:
        conn, _ = listener.accept()
        header = conn.recv(6, socket.MSG_WAITALL)
        captured.append(header + conn.recv(struct.unpack(">I", header[2:])[0], socket.MSG_WAITALL))
        conn.close()

    thread = threading.Thread(target=capture)
    thread.start()
    ae = AE(ae_title="CT1")
    ae.acse_timeout = 2
    ae.add_requested_context(VERIFICATION)
    ae.associate("127.0.0.1", listener.getsockname()[1], ae_title="RADBRIDGE")
    thread.join()
    listener.close()
    return captured[0]


def test_a_peer_stalling_mid_pdu_after_association_is_disconnected(served: Any) -> None:
    rb = served(idle_timeout_seconds=1)
    (sock,) = _attack(rb.server.port, 1, _association_request())
    try:
        sock.settimeout(GOOD_WITHIN)
        assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC
        sock.recv(65536)
        sock.sendall(b"\x04\x00" + struct.pack(">I", 100) + b"\x00\x00\x00\x60")  # P-DATA-TF, 4 of 100 bytes
        started = time.monotonic()
        assert _closed_by_server(sock, 1 + GOOD_WITHIN)
        assert time.monotonic() - started < 1 + GOOD_WITHIN
        _wait_for(lambda: not _holding(rb))
        assert not _holding(rb)
    finally:
        sock.close()


def _idle_association(port: int, host: str) -> Any:
    """An established association from ``host`` (pynetdicom, VERIFICATION and CT) that then sends nothing."""
    ae = AE(ae_title="IDLE")
    ae.network_timeout = None  # the SCU side never gives up: only the listener ends it
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE", bind_address=(host, 0))
    assert assoc.is_established
    return assoc


@needs_dcmtk
def test_idle_associations_of_four_hosts_give_their_slots_back_after_the_idle_timeout_with_one_line_each(
        served: Any, caplog: pytest.LogCaptureFixture) -> None:
    rb = served(max_associations=4, max_associations_per_host=1, idle_timeout_seconds=2, artim_timeout_seconds=30)
    caplog.set_level(logging.INFO)
    idle = [_idle_association(rb.server.port, f"127.0.0.{n}") for n in (2, 3, 4, 5)]
    started = time.monotonic()
    assert _echoscu(rb.server.port).returncode != 0  # every slot is held: A-ASSOCIATE-RJ
    _wait_for(lambda: all(not a.is_established for a in idle), within=2 + GOOD_WITHIN)
    _wait_for(lambda: not _holding(rb))  # the listener's side of each has ended: its slot is free
    assert all(a.is_aborted for a in idle) and time.monotonic() - started < 2 + GOOD_WITHIN
    echo = _echoscu(rb.server.port)
    assert echo.returncode == 0, echo.stderr
    lines = [r for r in caplog.records if "idle_timeout_seconds" in r.getMessage()]
    assert sorted(r.getMessage().split(":")[0] for r in lines) == [
        f"DICOM association with 127.0.0.{n}" for n in (2, 3, 4, 5)]  # one each, naming the peer
    assert {r.levelno for r in lines} == {logging.INFO}
    assert not [r for r in caplog.records if r.getMessage() == "Network timeout reached"]


def test_a_pdu_trickling_in_a_byte_at_a_time_is_cut_soon_after_the_idle_timeout(served: Any) -> None:
    """pynetdicom aborts at the idle timeout, but its reader is blocked on the PDU: the connection stayed
    open until ARTIM cut it (idle + 30 s here); now the listener cuts it a grace later."""
    rb = served(idle_timeout_seconds=2, artim_timeout_seconds=30)
    assoc = _idle_association(rb.server.port, ATTACKER)
    sock = assoc.dul.socket.socket
    pdv = struct.pack(">IBB", 994, sorted(assoc._accepted_cx)[0], 0x00) + bytes(992)  # a data set fragment
    pdu = b"\x04\x00" + struct.pack(">I", len(pdv)) + pdv
    started = time.monotonic()
    with contextlib.suppress(OSError):  # cut under us
        for byte in pdu:
            if not assoc.is_established or time.monotonic() - started > 60:
                break
            sock.send(bytes([byte]))
            time.sleep(0.5)
    assert not assoc.is_established
    assert time.monotonic() - started < 2 + 2 + GOOD_WITHIN
    _wait_for(lambda: not _holding(rb))
    assert not _holding(rb)
