"""The engine side of the receive workers: which worker gets a connection, and the slots' bookkeeping.

Workers are played by the test: the other end of each link, read with ``socket.recv_fds``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from channels.dicom.admission import HostSlots
from channels.dicom.receive_pool import ReceivePool, WorkerHandle
from engine.config.models import EngineConfig


class _Proc:
    pid = 4242


@pytest.fixture
def pool() -> Iterator[tuple[ReceivePool, HostSlots, list[socket.socket]]]:
    slots = HostSlots(5)
    rp = ReceivePool(EngineConfig(), 2, lambda: None, lambda: None)
    rp._slots = slots
    theirs = []
    for index in range(2):
        ours, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        rp._workers[index] = WorkerHandle(index, _Proc(), ours)  # type: ignore[arg-type]
        theirs.append(other)
    yield rp, slots, theirs
    for handle in rp.workers():
        handle.link.close()
    for other in theirs:
        other.close()


def _connection(slots: HostSlots, host: str = "10.0.0.7") -> tuple[socket.socket, socket.socket]:
    assert slots.take(host)
    return socket.socketpair()


def _received(link: socket.socket) -> tuple[dict[str, Any], socket.socket]:
    data, fds, _, _ = socket.recv_fds(link, 4096, 4)
    assert len(fds) == 1
    return json.loads(data), socket.socket(fileno=fds[0])


def test_with_no_worker_ready_the_connection_is_closed_and_its_slot_given_back(pool: Any) -> None:
    rp, slots, _ = pool
    server_side, peer = _connection(slots)
    rp.hand_off(server_side, ("10.0.0.7", 5000), "10.0.0.7", False)
    assert peer.recv(1) == b""  # closed
    assert slots.held("10.0.0.7") == 0
    peer.close()


def test_a_connection_goes_to_the_ready_worker_with_the_fewest_and_arrives_whole(pool: Any) -> None:
    rp, slots, theirs = pool
    for handle in rp.workers():
        handle.ready.set()
    rp.workers()[0].held["10.0.0.9"] = 3  # worker 0 is busier
    server_side, peer = _connection(slots)
    rp.hand_off(server_side, ("10.0.0.7", 5000), "10.0.0.7", True)
    message, handed = _received(theirs[1])
    assert message == {"host": "10.0.0.7", "address": ["10.0.0.7", 5000], "over": True}
    peer.sendall(b"A-ASSOCIATE-RQ")
    assert handed.recv(64) == b"A-ASSOCIATE-RQ"  # the same connection, now held by the worker
    assert rp.workers()[1].held["10.0.0.7"] == 1 and slots.held("10.0.0.7") == 1
    handed.close()
    peer.close()


def test_a_closed_report_frees_the_slot_once(pool: Any) -> None:
    rp, slots, theirs = pool
    handle = rp.workers()[0]
    handle.ready.set()
    rp.workers()[1].ready.clear()
    server_side, peer = _connection(slots)
    rp.hand_off(server_side, ("10.0.0.7", 5000), "10.0.0.7", False)
    _, handed = _received(theirs[0])
    rp._report(handle, b"closed 10.0.0.7")
    rp._report(handle, b"closed 10.0.0.7")  # a report for a connection it does not hold changes nothing
    assert slots.held("10.0.0.7") == 0 and handle.open_connections() == 0
    assert slots.take("10.0.0.7")  # the slot is there to take again, once
    assert slots.held("10.0.0.7") == 1
    handed.close()
    peer.close()


def test_notices_wake_the_outbox_and_the_commit_listeners(pool: Any) -> None:
    rp, _, _ = pool
    woken: list[str] = []
    rp._on_queued, rp._on_committed = (lambda: woken.append("outbox")), (lambda: woken.append("listeners"))
    handle = rp.workers()[0]
    rp._report(handle, b"notify K")
    rp._report(handle, b"notify KQ")
    assert woken == ["listeners", "outbox", "listeners"]
