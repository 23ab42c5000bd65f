"""MLLP destination: forward a message and read the receiver's ACK (HL7 v2.5.1 2.9.2).

AA/CA is success. AE/CE is retryable (the receiver may recover), AR/CR is
permanent. An ACK whose MSA-2 does not echo our MSH-10, a timeout or a broken
connection is retryable, and the connection is reopened for the next attempt.
"""

from __future__ import annotations

import asyncio
import os
import ssl

from channels.mllp.client import MLLPClient
from engine.config.models import MLLPDestinationConfig
from engine.errors import PermanentDelivery, RetryableDelivery
from engine.hl7.charset import decode
from engine.hl7.er7 import Message
from engine.outbox.destination import register_destination
from engine.tls import client_context

__all__ = ["MLLPDestination", "classify_ack"]

_OK = {"AA", "CA"}
_RETRY = {"AE", "CE"}
_PERMANENT = {"AR", "CR"}


def classify_ack(sent_control_id: str, answer: bytes) -> str:
    """Return the ACK text if it accepts the message; raise a DeliveryError otherwise."""
    text = decode(answer).text
    ack = Message(text)
    msa = ack.segment("MSA")
    if ack.msh is None or msa is None:
        raise RetryableDelivery(*["answer is not an HL7 acknowledgment"] * 2)
    code = msa.value(1).strip().upper()
    echoed = msa.value(2).strip()
    if echoed != sent_control_id:
        raise RetryableDelivery(f"MSA-2 {echoed!r} does not match MSH-10 {sent_control_id!r}",
                                "MSA-2 does not match the MSH-10 sent")
    detail = f"{code} {msa.value(3)}".strip()
    if code in _OK:
        return text
    if code in _PERMANENT:
        raise PermanentDelivery(f"receiver rejected the message: {detail}", f"receiver answered {code}")
    if code in _RETRY:
        raise RetryableDelivery(f"receiver reported an error: {detail}", f"receiver answered {code}")
    raise RetryableDelivery(f"unknown acknowledgment code {code!r}", "receiver answered an unknown acknowledgment code")


class MLLPDestination:
    """Keeps one connection to the receiver and sends one message at a time."""

    def __init__(self, config: MLLPDestinationConfig) -> None:
        self.name = config.name
        self._timeout = config.timeout_seconds
        self._where = f"{config.host}:{config.port}"
        tls = config.tls
        self._client = MLLPClient(
            config.host, config.port, config.timeout_seconds, client_context(tls),
            tls.server_hostname if tls else None,
        )

    async def send(self, payload: bytes, media_type: str) -> str:
        control_id = Message(decode(payload).text).control_id
        try:  # connect, write and the ACK together within the timeout
            async with asyncio.timeout(self._timeout):
                answer = await self._client.send(payload)
        except (TimeoutError, OSError, ConnectionError) as exc:
            await self._client.close()
            # Worded from the socket alone (address, the OS's reason): the log line of the attempt says it too.
            raise RetryableDelivery(*[f"{self._where}: {self._why(exc)}"] * 2) from exc
        try:
            return classify_ack(control_id, answer)
        except RetryableDelivery:
            await self._client.close()
            raise

    def _why(self, exc: OSError) -> str:
        """A failed connect or send, worded from the socket alone (no message data)."""
        if isinstance(exc, TimeoutError):
            return f"no answer within {self._timeout:g} s"
        if isinstance(exc, ssl.SSLError):
            return f"TLS failed: {exc.reason or type(exc).__name__}"
        if exc.errno:
            return f"{type(exc).__name__} ({os.strerror(exc.errno)})"
        return f"{type(exc).__name__}" + (f" ({exc})" if exc.args and isinstance(exc.args[0], str) else "")

    async def close(self) -> None:
        await self._client.close()


register_destination("mllp", MLLPDestination)
