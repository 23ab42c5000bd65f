"""What a failed MLLP delivery says: the row's last_error and the log line of the attempt (DeliveryError.public)."""

from __future__ import annotations

import asyncio

import pytest

from channels.mllp.destination import MLLPDestination, classify_ack
from engine.config.models import MLLPDestinationConfig
from engine.errors import RetryableDelivery
from tests.conftest import free_port

ORU = b"MSH|^~\\&|RADBRIDGE|RAD|EHR|HOSP|20261207||ORU^R01|C1|P|2.5.1\rPID|1||PHI4711^^^H^MR||DOE^JANE\r"


def test_a_receiver_that_is_down_is_named_in_the_log_line_not_only_the_exception_type() -> None:
    """The EHR down at night: the log said "attempt 4 failed (QUEUED): RetryableDelivery" (new-user campaign)."""
    port = free_port()
    dest = MLLPDestination(MLLPDestinationConfig(type="mllp", name="ehr", host="127.0.0.1", port=port,
                                                 timeout_seconds=5))

    async def attempt() -> RetryableDelivery:
        try:
            with pytest.raises(RetryableDelivery) as caught:
                await dest.send(ORU, "x-application/hl7-v2+er7")
            return caught.value
        finally:
            await dest.close()

    exc = asyncio.run(attempt())
    assert exc.public.startswith(f"127.0.0.1:{port}: ConnectionRefusedError"), exc.public
    assert str(exc) == exc.public and "PHI4711" not in exc.public


def test_an_unknown_acknowledgment_code_is_logged_as_such() -> None:
    with pytest.raises(RetryableDelivery) as caught:
        classify_ack("C1", b"MSH|^~\\&|EHR|H|RB|R|2026||ACK|A1|P|2.5.1\rMSA|ZZ|C1\r")
    assert caught.value.public == "receiver answered an unknown acknowledgment code"


def test_a_kept_connection_the_receiver_closed_while_idle_is_replaced_before_sending() -> None:
    """An EHR that restarted (or closes idle connections): the first delivery after it failed with "peer
    closed the connection before answering" and waited for a retry (new-user campaign); now a new
    connection is opened, since nothing was sent on the closed one."""
    from channels.mllp.client import MLLPClient
    from engine.hl7.framing import frame

    ack = b"MSH|^~\\&|EHR|H|RB|R|2026||ACK|A1|P|2.5.1\rMSA|AA|C1\r"
    connections: list[int] = []

    async def answer_once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\x1c\r")
        writer.write(frame(ack))
        await writer.drain()
        writer.close()  # as a receiver that restarts (or drops idle connections) does

    async def scenario() -> list[bytes]:
        server = await asyncio.start_server(answer_once_then_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = MLLPClient("127.0.0.1", port, timeout=5)
        try:
            first = await client.send(ORU)
            await asyncio.sleep(0.3)  # idle: the receiver's FIN arrives
            second = await client.send(ORU)
            return [first, second]
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    answers = asyncio.run(scenario())
    assert answers == [ack, ack] and len(connections) == 2
