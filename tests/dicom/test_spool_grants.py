"""A receive worker's spool grants from the engine process (channels.dicom.spool_grants), over a fake link."""

from __future__ import annotations

import threading

from channels.dicom.spool_grants import GRANT_BYTES, GrantedBytes, kept_bytes
from engine.archive.spool_budget import HostBytes


class EngineSide:
    """The engine process's ledger answering at once, as ReceivePool does."""

    def __init__(self, per_host: int) -> None:
        self.ledger = HostBytes(per_host)
        self.grants: GrantedBytes | None = None
        self.asked = 0

    def send(self, text: str) -> None:
        kind, *rest = text.split()
        if kind == "return":
            self.ledger.release(rest[0], int(rest[1]))
            return
        ident, host, count = rest
        self.asked += 1
        ok = self.ledger.reserve(host, int(count))
        assert self.grants is not None
        threading.Thread(target=self.grants.answer, args=(f"granted {ident} {host} {count} {int(ok)}",)).start()


def _worker(engine: EngineSide) -> GrantedBytes:
    engine.grants = GrantedBytes(engine.send)
    return engine.grants


def _two_workers(engine: EngineSide, keep: int = GRANT_BYTES) -> tuple[GrantedBytes, GrantedBytes]:
    """Two workers on one engine side, each answered on its own link."""
    workers = GrantedBytes(engine.send, keep), GrantedBytes(engine.send, keep)
    for worker in workers:
        def relay(text: str, worker: GrantedBytes = worker) -> None:
            engine.grants = worker
            engine.send(text)
        worker._send = relay  # type: ignore[method-assign]
    return workers


def test_a_worker_asks_once_per_grant_not_once_per_image() -> None:
    engine = EngineSide(8 * GRANT_BYTES)
    worker = _worker(engine)
    for _ in range(100):
        assert worker.reserve("h", 512 << 10)
        worker.release("h", 512 << 10)
    assert engine.asked == 1 and engine.ledger.held("h") == GRANT_BYTES  # one grant kept while the host is here


def test_two_workers_together_stay_within_the_hosts_share() -> None:
    engine = EngineSide(3 * GRANT_BYTES)
    one, two = _two_workers(engine)
    assert one.reserve("h", 2 * GRANT_BYTES)
    assert not two.reserve("h", 2 * GRANT_BYTES)  # one share for the host, whichever worker asks
    assert two.reserve("h", GRANT_BYTES)
    assert engine.ledger.held("h") == 3 * GRANT_BYTES


def test_near_the_share_a_worker_asks_for_just_what_it_needs() -> None:
    engine = EngineSide(GRANT_BYTES + 10)
    worker = _worker(engine)
    assert worker.reserve("h", GRANT_BYTES)
    assert worker.reserve("h", 10)  # a whole grant more was refused: the 10 bytes were granted
    assert not worker.reserve("h", 1)


def test_a_host_gone_from_the_worker_hands_its_grant_back() -> None:
    engine = EngineSide(4 * GRANT_BYTES)
    worker = _worker(engine)
    assert worker.reserve("h", 3 * GRANT_BYTES)
    worker.release("h", 3 * GRANT_BYTES)
    assert engine.ledger.held("h") == GRANT_BYTES  # what is beyond one grant went back at once
    worker.forget("h")
    assert engine.ledger.held("h") == 0


def test_an_answer_after_the_store_stopped_waiting_goes_back() -> None:
    sent: list[str] = []
    worker = GrantedBytes(sent.append)
    worker.answer("granted 7 h 100 1")  # nobody waits for request 7 any more
    assert sent == ["return h 100"]


def test_what_workers_keep_unused_never_stops_the_largest_instance_on_another() -> None:
    """Bounds that leave little room beside the largest instance (per host = instance + 10 MiB, 2 workers):
    each worker keeps at most 5 MiB unused, so after worker one stored an instance, one of the largest size
    still fits on worker two. Before, worker one kept up to a whole 64 MiB grant and the instance was 0xA700
    on every resend."""
    mib = 1 << 20
    instance, per_host = 40 * mib, 50 * mib
    assert kept_bytes(per_host, instance, 2) == 5 * mib
    assert kept_bytes(8 << 30, 4 << 30, 2) == GRANT_BYTES and kept_bytes(instance, instance, 2) == 0
    engine = EngineSide(per_host)
    keep = kept_bytes(per_host, instance, 2)
    one, two = _two_workers(engine, keep)
    for _ in range(10):  # an instance of the largest size, in 4 MiB steps, then stored
        assert one.reserve("h", 4 * mib)
    one.release("h", instance)
    assert engine.ledger.held("h") <= keep
    for _ in range(10):
        assert two.reserve("h", 4 * mib)
