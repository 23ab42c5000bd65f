"""Forwarding through the durable outbox to a real MLLP receiver (tests/integration/mllp_peer.py).

Deliveries are at-least-once and leave in order per patient (ordering_key
patient_id); a receiver's AR ends the row in ERROR until it is replayed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import EngineProcess, free_port
from tests.integration.conftest import adt, cli_json, send_all, write_channel, write_engine_yaml
from tests.integration.mllp_peer import MLLPPeer, Received

pytestmark = pytest.mark.timeout(90)

PATIENTS = ("PA", "PB", "PC")
#: The engine's ACK timeout toward the peer. Every ACK later than this is a resend, so the
#: "arrive once" assertions need it far above what a loaded machine can stall the peer for.
ACK_TIMEOUT = 3.0


@pytest.fixture
def peer() -> Iterator[MLLPPeer]:
    receiver = MLLPPeer(free_port())
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def forwarder(engine_process: EngineProcess, peer: MLLPPeer,
              db_url: str) -> tuple[EngineProcess, int]:
    """A running engine forwarding every ADT from its MLLP port to ``peer``."""
    port = free_port()
    # A short lease: rows leased by a killed engine are due again soon after a restart.
    write_engine_yaml(engine_process, f"""\
        database:
          url: {db_url}
        outbox:
          poll_interval_seconds: 0.2
          lease_seconds: 14  # the ACK timeout (3) + 11: the least the engine accepts
        """)
    write_channel(engine_process, "forward", f"""\
        name: forward
        source:
          type: mllp
          port: {port}
        accept:
          message_types: ["ADT^*"]
        destinations:
          - name: downstream
            type: mllp
            host: 127.0.0.1
            port: {peer.port}
            ordering_key: patient_id
            timeout_seconds: {ACK_TIMEOUT}
            retry: {{initial_seconds: 0.2, max_seconds: 1}}
        """)
    engine_process.start(wait_port=port)
    return engine_process, port


def _interleaved() -> list[bytes]:
    """30 ADT messages, 10 per patient, patients taking turns."""
    return [adt(f"OUT{n:02d}", patient_id=PATIENTS[n % 3]) for n in range(30)]


def _send(port: int, payloads: list[bytes]) -> list[str]:
    return [ack.code for ack in send_all(port, payloads)]


def _first_arrivals_per_patient(received: list[Received]) -> dict[str, list[str]]:
    seen: set[str] = set()
    order: dict[str, list[str]] = {}
    for r in received:
        if r.control_id not in seen:
            seen.add(r.control_id)
            order.setdefault(r.patient_id, []).append(r.control_id)
    return order


def _expected_order() -> dict[str, list[str]]:
    return {p: [f"OUT{n:02d}" for n in range(30) if PATIENTS[n % 3] == p] for p in PATIENTS}


def _control_ids(received: list[Received]) -> list[str]:
    return [r.control_id for r in received]


def _wait(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError("condition not met")


def test_forwarded_messages_arrive_once_in_order_per_patient(
        forwarder: tuple[EngineProcess, int], peer: MLLPPeer) -> None:
    peer.up()

    assert set(_send(forwarder[1], _interleaved())) == {"AA"}
    received = peer.wait_for(30)

    time.sleep(0.5)  # a stray resend would show up here
    assert sorted(_control_ids(peer.messages())) == sorted(f"OUT{n:02d}" for n in range(30))
    assert _first_arrivals_per_patient(received) == _expected_order()


def test_messages_queued_while_the_peer_is_down_arrive_in_order_when_it_comes_up(
        forwarder: tuple[EngineProcess, int], peer: MLLPPeer) -> None:
    assert set(_send(forwarder[1], _interleaved())) == {"AA"}
    time.sleep(1.0)  # several failed attempts (connection refused) per patient
    assert peer.messages() == []

    peer.up()
    received = peer.wait_for(30)

    time.sleep(0.5)
    assert sorted(_control_ids(peer.messages())) == sorted(f"OUT{n:02d}" for n in range(30))
    assert _first_arrivals_per_patient(received) == _expected_order()


def test_a_late_ack_causes_only_a_resend_of_that_message_and_keeps_order(
        forwarder: tuple[EngineProcess, int], peer: MLLPPeer) -> None:
    peer.up()
    peer.delay_next_ack(ACK_TIMEOUT * 2)

    assert set(_send(forwarder[1], _interleaved())) == {"AA"}
    received = peer.wait_for(31)

    time.sleep(0.5)
    ids = _control_ids(peer.messages())
    assert peer.timeouts_caused == 1
    assert {i for i in ids if ids.count(i) > 1} == {"OUT00"}
    assert ids.count("OUT00") == 2
    assert _first_arrivals_per_patient(received) == _expected_order()


@pytest.mark.slow
def test_queued_messages_survive_a_kill_and_arrive_in_order_after_the_restart(
        forwarder: tuple[EngineProcess, int], peer: MLLPPeer) -> None:
    engine, port = forwarder
    assert set(_send(port, _interleaved())) == {"AA"}
    time.sleep(0.5)
    engine.kill()
    peer.up()

    engine.start(wait_port=port)
    received = peer.wait_for(30)

    time.sleep(0.5)
    assert sorted(_control_ids(peer.messages())) == sorted(f"OUT{n:02d}" for n in range(30))
    assert _first_arrivals_per_patient(received) == _expected_order()


@pytest.fixture
def rejected(forwarder: tuple[EngineProcess, int], peer: MLLPPeer) -> tuple[EngineProcess, int]:
    """One message the peer answered AR; returns the engine and the message id."""
    engine, port = forwarder
    peer.answer("AR")
    peer.up()
    assert _send(port, [adt("REJ1", patient_id="PA")]) == ["AA"]
    (row,) = cli_json(engine, "messages", "list", "--control-id", "REJ1")

    def ended() -> bool:
        deliveries = cli_json(engine, "messages", "show", str(row["id"]))["deliveries"]
        return [d["status"] for d in deliveries] == ["ERROR"]

    _wait(ended)
    return engine, int(row["id"])


def test_a_rejected_delivery_ends_in_error_after_one_attempt(
        rejected: tuple[EngineProcess, int], peer: MLLPPeer) -> None:
    engine, message_id = rejected

    (delivery,) = cli_json(engine, "messages", "show", str(message_id))["deliveries"]

    assert delivery["attempts"] == 1
    assert "AR" in delivery["last_error"]
    assert _control_ids(peer.messages()) == ["REJ1"]


def test_a_rejected_delivery_counts_as_a_delivery_error_in_status(
        rejected: tuple[EngineProcess, int]) -> None:
    engine, _ = rejected

    status = cli_json(engine, "status")["channels"]["forward"]

    assert (status["delivery_errors"], status["queued"]) == (1, 0)


def test_replay_delivers_a_rejected_message_once_the_peer_accepts(
        rejected: tuple[EngineProcess, int], peer: MLLPPeer) -> None:
    engine, message_id = rejected
    peer.answer("AA")

    result = engine.cli("messages", "replay", str(message_id))

    assert result.returncode == 0, result.stdout + result.stderr
    _wait(lambda: [d["status"] for d in
                   cli_json(engine, "messages", "show", str(message_id))["deliveries"]] == ["SENT"])
    assert _control_ids(peer.messages()) == ["REJ1", "REJ1"]
    assert cli_json(engine, "status")["channels"]["forward"]["delivery_errors"] == 0


def test_status_shows_the_queue_and_its_age_while_the_peer_is_down(
        forwarder: tuple[EngineProcess, int], peer: MLLPPeer) -> None:
    engine, port = forwarder
    assert _send(port, [adt("Q1", patient_id="PA"), adt("Q2", patient_id="PB")]) == ["AA", "AA"]
    time.sleep(0.5)

    status = cli_json(engine, "status")["channels"]["forward"]

    assert (status["received"], status["queued"], status["delivery_errors"]) == (2, 2, 0)
    assert status["oldest_queued_seconds"] >= 0.5
