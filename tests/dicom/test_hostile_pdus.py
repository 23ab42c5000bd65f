"""Hostile PDUs on the DICOM listener: lengths that would take the process's memory, and junk.

Found by an adversarial pass against a running engine: a PDU header announcing 4 GB made the
receive worker read (and hold) whatever followed, 1 GB in 8 s from one connection; a command set
or a C-FIND identifier whose fragments never ended grew in memory for as long as the peer sent;
and a peer sending non-DICOM bytes (an HTTP request, a TLS ClientHello) got an A-ABORT and an
ERROR line for every 6 bytes of them. Now each is one protocol error: one A-ABORT, one log line,
and the rest of what the peer sends is read and dropped; other peers are served meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import encode

from channels.dicom.store_stream import (
    MAX_COMMAND_BYTES,
    MAX_PRESENTATION_CONTEXTS,
    MAX_UNSPOOLED_DATASET_BYTES,
    MAX_WHOLE_PDU_BYTES,
)
from tests.dicom.store_peer import running_scp

pytestmark = pytest.mark.timeout(120)

VERIFICATION = "1.2.840.10008.1.1"
MWL_FIND = "1.2.840.10008.5.1.4.31"
A_ABORT = 0x07


def _pdu(cx: int, control: int, data: bytes) -> bytes:
    body = struct.pack(">IBB", len(data) + 2, cx, control) + data
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def _associate(port: int) -> Any:
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(VERIFICATION, ExplicitVRLittleEndian)
    ae.add_requested_context(MWL_FIND, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    return assoc


def _take_socket(assoc: Any) -> socket.socket:
    """The association's socket, with pynetdicom's reactor kept off it (the test reads the answers)."""
    sock: socket.socket = assoc.dul.socket.socket
    assoc.dul.socket.socket = None
    return sock


def _pdus_until_closed(sock: socket.socket, seconds: float = 15.0) -> list[int]:
    """The types of the PDUs the listener sends until it closes the connection (or ``seconds`` pass)."""
    sock.settimeout(0.5)
    data = bytearray()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    types, pos = [], 0
    while pos + 6 <= len(data):
        kind, _, length = struct.unpack(">BBI", data[pos : pos + 6])
        types.append(kind)
        pos += 6 + length
    return types


def _echo_works(port: int) -> bool:
    ae = AE(ae_title="GOOD")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    try:
        return assoc.is_established and int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def _find_command() -> bytes:
    command = Dataset()
    command.AffectedSOPClassUID = MWL_FIND
    command.CommandField = 0x0020
    command.MessageID = 1
    command.Priority = 0
    command.CommandDataSetType = 0x0001
    body = encode(command, True, True)
    assert body is not None
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _send_while_read(sock: socket.socket, data: bytes) -> None:
    """Send ``data``; the listener may abort and close before it has all of it."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


def test_a_pdu_header_announcing_4_gb_is_aborted_at_once_not_read(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with running_scp(tmp_path / "rb", dicom={"port": 0, "ae_title": "RADBRIDGE", "artim_timeout_seconds": 30}) as scp:
        sock = socket.create_connection(("127.0.0.1", scp.port))
        with caplog.at_level(logging.INFO, logger="channels.dicom"):  # pynetdicom below INFO: the engine's own reader
            # An A-ASSOCIATE-RQ "of 4 GB", then 2 MiB of it: read whole, it would be held until ARTIM (30 s).
            _send_while_read(sock, struct.pack(">BBI", 0x01, 0, 0xFFFFFFFF) + bytes(2 * MAX_WHOLE_PDU_BYTES))
            types = _pdus_until_closed(sock, seconds=20)
            assert types[:1] == [A_ABORT]
            assert _echo_works(scp.port)
        sock.close()
        lines = [r for r in caplog.records if "announces 4294967295 bytes" in r.getMessage()]
        assert len(lines) == 1 and "127.0.0.1" in lines[0].getMessage()


def test_non_dicom_bytes_get_one_abort_and_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with running_scp(tmp_path / "rb") as scp:
        sock = socket.create_connection(("127.0.0.1", scp.port))
        with caplog.at_level(logging.INFO, logger="channels.dicom"):  # pynetdicom below INFO: the engine's own reader
            _send_while_read(sock, b"GET / HTTP/1.1\r\nHost: radbridge\r\n\r\n" + bytes(6000))
            time.sleep(1)
            sock.shutdown(socket.SHUT_WR)
            types = _pdus_until_closed(sock)
            assert _echo_works(scp.port)
        sock.close()
        assert types == [A_ABORT]
        errors = [r for r in caplog.records if r.name.startswith(("channels.dicom", "pynetdicom"))
                  and r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "unknown PDU type 0x47" in errors[0].getMessage()


def test_a_command_set_that_never_ends_is_aborted_past_its_limit(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with running_scp(tmp_path / "rb") as scp, caplog.at_level(logging.INFO, logger="channels.dicom"):
        assoc = _associate(scp.port)
        sock = _take_socket(assoc)
        cx = sorted(assoc._accepted_cx)[0]
        fragment = _pdu(cx, 0x01, bytes(16384))  # command, not last
        _send_while_read(sock, fragment * (MAX_COMMAND_BYTES // 16384 + 4))
        types = _pdus_until_closed(sock)
        assert A_ABORT in types
        assert _echo_works(scp.port)
        sock.close()
    assert any(f"a command set longer than {MAX_COMMAND_BYTES} bytes" in r.getMessage() for r in caplog.records)


def test_a_c_find_identifier_that_never_ends_is_aborted_past_its_limit(tmp_path: Path) -> None:
    with running_scp(tmp_path / "rb") as scp:
        assoc = _associate(scp.port)
        sock = _take_socket(assoc)
        cx = next(c.context_id for c in assoc.accepted_contexts if c.abstract_syntax == MWL_FIND)
        fragment = _pdu(cx, 0x00, bytes(65536))  # data set, not last
        _send_while_read(sock, _pdu(cx, 0x03, _find_command())
                         + fragment * (MAX_UNSPOOLED_DATASET_BYTES // 65536 + 4))  # fmt: skip
        types = _pdus_until_closed(sock)
        assert A_ABORT in types
        assert _echo_works(scp.port)
        sock.close()


def test_a_peer_resetting_mid_pdu_is_one_info_line_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The engine's own reader (pynetdicom below INFO, as in production); pynetdicom's: test_connection_limits."""
    with running_scp(tmp_path / "rb") as scp, caplog.at_level(logging.INFO, logger="channels.dicom"):
        sock = socket.create_connection(("127.0.0.1", scp.port))
        sock.sendall(struct.pack(">BBI", 0x01, 0, 200) + bytes(50))  # an A-ASSOCIATE-RQ cut short
        time.sleep(0.5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("reset" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        assert _echo_works(scp.port)
    dicom = [r for r in caplog.records if r.name.startswith(("pynetdicom", "channels.dicom"))]
    assert [r.getMessage() for r in dicom if r.levelno >= logging.WARNING or r.exc_info] == []
    gone = [r.getMessage() for r in dicom if "reset or timed out" in r.getMessage()]
    assert len(gone) == 1 and "DICOM connection from 127.0.0.1:" in gone[0], gone


def _association_rq(contexts: int) -> bytes:
    """An A-ASSOCIATE-RQ proposing CT Image Storage ``contexts`` times (ids cycling through the odd numbers)."""
    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    proposed = b"".join(
        item(0x20, bytes([(2 * n + 1) % 256, 0, 0, 0]) + item(0x30, b"1.2.840.10008.5.1.4.1.1.2")
             + item(0x40, b"1.2.840.10008.1.2"))
        for n in range(contexts)
    )
    user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4"))
    body = (struct.pack(">HH", 1, 0) + b"RADBRIDGE".ljust(16) + b"MANY".ljust(16) + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + proposed + user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


@pytest.mark.parametrize(("contexts", "answer"), [(MAX_PRESENTATION_CONTEXTS, 0x02), (5000, A_ABORT)])
def test_an_association_request_with_more_presentation_contexts_than_ps3_8_allows_is_aborted(
        tmp_path: Path, contexts: int, answer: int) -> None:
    with running_scp(tmp_path / "rb") as scp:
        sock = socket.create_connection(("127.0.0.1", scp.port))
        sock.settimeout(10)
        started = time.monotonic()
        sock.sendall(_association_rq(contexts))
        assert sock.recv(1) == bytes([answer])
        assert time.monotonic() - started < 1.0  # 5,000 negotiated took 2 s of CPU
        sock.close()
        assert _echo_works(scp.port)


def test_a_connection_refused_because_every_slot_is_taken_is_said_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Idle connections from other hosts hold every dicom.max_associations slot (until ARTIM): the modality
    refused meanwhile was answered A-ASSOCIATE-RJ without a word in the log; now one WARNING per host and minute."""
    dicom = {"port": 0, "ae_title": "RADBRIDGE", "max_associations": 2, "artim_timeout_seconds": 30}
    with running_scp(tmp_path / "rb", dicom=dicom) as scp, caplog.at_level(logging.INFO, logger="channels.dicom"):
        idle = []
        for n in (10, 11):
            sock = socket.socket()
            sock.bind((f"127.0.0.{n}", 0))
            sock.connect(("127.0.0.1", scp.port))
            idle.append(sock)
        time.sleep(0.5)
        ae = AE(ae_title="GOOD")
        ae.add_requested_context(VERIFICATION)
        for _ in range(2):
            assoc = ae.associate("127.0.0.1", scp.port, ae_title="RADBRIDGE")
            assert assoc.is_rejected
        for sock in idle:
            sock.close()
    lines = [r.getMessage() for r in caplog.records if "A-ASSOCIATE-RJ" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("DICOM connection from 127.0.0.1 answered A-ASSOCIATE-RJ (1 since the last report)")
    assert "dicom.max_associations 2" in lines[0]
