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
