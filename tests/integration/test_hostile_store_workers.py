"""A hostile C-STORE peer against ``radbridge run`` with receive worker processes (``dicom.receive_processes: 2``).

The streamed receive runs in the worker processes: a data set fragment on another presentation
context than its command's aborts the association and stores nothing, an association that ends
mid-data-set leaves no spool file, and the engine keeps serving (tests/dicom/test_hostile_store_peer.py
has the same in one process, ``receive_processes: 0``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

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


def test_with_receive_workers_one_hosts_spool_share_holds_across_the_workers(
        engine_process: EngineProcess, tmp_path: Path, corpus: Path) -> None:
    """The same host's second association runs on the other worker: its share is still the one share."""
    from tests.dicom.test_spool_bounds import BOUNDS, MIB, OTHER_HOST, associate, ct, send_part, store

    port = _start(engine_process, "".join(f"  {key}: {value}\n" for key, value in BOUNDS.items()))
    incoming = engine_process.data_dir / "archive" / ".incoming"
    held = ct(corpus, 7 * MIB)
    data = _sent_dataset(held, tmp_path)
    hog = associate(port, OTHER_HOST)  # on one worker
    send_part(hog, held.SOPInstanceUID, data[: 6 * MIB])
    assert _wait(lambda: sum(p.stat().st_size for p in incoming.glob("rx-*")) >= 6 * MIB)
    assert store(port, ct(corpus, 6 * MIB), OTHER_HOST) == 0xA700  # on the other worker: the host's share is taken
    assert store(port, ct(corpus, 6 * MIB)) == 0x0000  # another host stores
    send_part(hog, "", data[6 * MIB :], last=True)
    indexed = engine_process.data_dir / "radbridge.db"
    assert _wait(lambda: held.SOPInstanceUID in {r[0] for r in sqlite_rows(indexed, "SELECT sop_instance_uid"
                                                                                     " FROM instances")})
    hog.release()
    assert store(port, ct(corpus, 6 * MIB), OTHER_HOST) == 0x0000  # its bytes were given back

    endless = associate(port)
    with contextlib.suppress(OSError):  # the association is aborted under the sender
        send_part(endless, generate_uid(), os.urandom(MIB) * 16)  # past max_instance_bytes
    assert _wait(lambda: not endless.is_established) and endless.is_aborted
    assert _wait(lambda: list(incoming.glob("rx-*")) == [])
    assert "passed 8388608 bytes (dicom.max_instance_bytes)" in engine_process.log()


def test_with_receive_workers_idle_associations_give_their_slots_back_after_the_idle_timeout(
        engine_process: EngineProcess) -> None:
    """Both slots held by idle associations (one on each worker): a modality is rejected, then served once the
    idle timeout ended them; the engine log says so once per association."""
    port = _start(engine_process, "  max_associations: 2\n  idle_timeout_seconds: 2\n")
    idle = [_established_idle(port, host) for host in ("127.0.0.2", "127.0.0.3")]
    good = _associate_verification(port)
    assert good.is_rejected
    assert _wait(lambda: all(not a.is_established for a in idle)) and all(a.is_aborted for a in idle)
    served, deadline = False, time.monotonic() + 15
    while not served and time.monotonic() < deadline:
        served = _echo_served(port)
        time.sleep(0.1)
    assert served
    log = engine_process.log()
    for host in ("127.0.0.2", "127.0.0.3"):
        assert log.count(f"DICOM association with {host}:") == 1, log
    assert "Network timeout reached" not in log


def _established_idle(port: int, host: str) -> Any:
    """An idle association from ``host``, asked again while the engine refuses it: right after the start, the
    start's own port probe may still hold a slot for a moment on a loaded machine (seen in CI: the second idle
    association rejected), which is the limit working, not what this test is about."""
    from tests.dicom.test_connection_limits import _idle_association

    deadline = time.monotonic() + 15
    while True:
        try:
            return _idle_association(port, host)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _associate_verification(port: int) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title="CT1")
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")


def _echo_served(port: int) -> bool:
    assoc = _associate_verification(port)
    if not assoc.is_established:
        return False
    assoc.release()
    return True
