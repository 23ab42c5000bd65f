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

import pytest
from pynetdicom import AE

from tests.dicom.store_peer import running_scp

pytestmark = pytest.mark.timeout(120)

VERIFICATION = "1.2.840.10008.1.1"
MWL_FIND = "1.2.840.10008.5.1.4.31"
A_ABORT = 0x07


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


def _send_while_read(sock: socket.socket, data: bytes) -> None:
    """Send ``data``; the listener may abort and close before it has all of it."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


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
