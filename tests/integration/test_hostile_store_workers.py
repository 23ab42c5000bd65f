"""A hostile C-STORE peer against ``radbridge run`` with receive worker processes (``dicom.receive_processes: 2``).

The streamed receive runs in the worker processes: a data set fragment on another presentation
context than its command's aborts the association and stores nothing, an association that ends
mid-data-set leaves no spool file, and the engine keeps serving (tests/dicom/test_hostile_store_peer.py
has the same in one process, ``receive_processes: 0``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from tests.conftest import EngineProcess
from tests.dicom.test_hostile_store_peer import CT, MR, _ct
from tests.dicom.test_store_stream import _pdu, _sent_dataset, _store_command
from tests.integration.conftest import sqlite_rows
from tests.integration.test_receive_workers import _start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _associate(port: int) -> object:
    from pynetdicom import AE

    ae = AE(ae_title="CT1")
    for sop_class in (CT, MR):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    return assoc


def _wait(check: object, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)
    return bool(check())  # type: ignore[operator]


def test_with_receive_workers_a_stray_fragment_aborts_and_an_abort_mid_data_set_leaves_nothing(
        engine_process: EngineProcess, tmp_path: Path) -> None:
    port = _start(engine_process)
    incoming = engine_process.data_dir / "archive" / ".incoming"

    def spooled() -> list[Path]:
        return list(incoming.glob("rx-*"))

    def indexed() -> list[str]:
        return [r[0] for r in sqlite_rows(engine_process.data_dir / "radbridge.db",
                                          "SELECT sop_instance_uid FROM instances")]

    stray, aborted, good = _ct(), _ct(), _ct()
    assoc = _associate(port)
    cx, other = sorted(assoc._accepted_cx)  # type: ignore[attr-defined]
    data = _sent_dataset(stray, tmp_path)
    assoc.dul.socket.socket.sendall(  # type: ignore[attr-defined]
        _pdu((cx, 0x03, _store_command(1, stray.SOPInstanceUID))) + _pdu((cx, 0x00, data[:500]))
        + _pdu((other, 0x02, data[500:])))
    assert _wait(lambda: not assoc.is_established) and assoc.is_aborted  # type: ignore[attr-defined]

    assoc = _associate(port)
    cx = sorted(assoc._accepted_cx)[0]  # type: ignore[attr-defined]
    data = _sent_dataset(aborted, tmp_path)
    assoc.dul.socket.socket.sendall(  # type: ignore[attr-defined]
        _pdu((cx, 0x03, _store_command(1, aborted.SOPInstanceUID))) + _pdu((cx, 0x00, data[:500])))
    assert _wait(lambda: len(spooled()) == 1)  # the data set was being received
    assoc.abort()  # type: ignore[attr-defined]
    assert _wait(lambda: spooled() == [])

    assoc = _associate(port)
    assert int(assoc.send_c_store(good).Status) == 0x0000  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert indexed() == [good.SOPInstanceUID]
