"""HTTP destination (httpx): 2xx is success; 408, 429 and 5xx retry; other 4xx are permanent."""

from __future__ import annotations

import asyncio

import httpx

from engine.config.models import HTTPDestinationConfig
from engine.errors import PermanentDelivery, RetryableDelivery
from engine.outbox.destination import register_destination
from engine.tls import client_context

__all__ = ["HTTPDestination", "classify_status"]

_RETRY_STATUS = {408, 425, 429}


def classify_status(status: int, body: str) -> str:
    """Return ``body`` for 2xx; raise the DeliveryError the status calls for."""
    if 200 <= status < 300:
        return body
    detail = f"HTTP {status}: {body[:200]}"
    if status >= 500 or status in _RETRY_STATUS:
        raise RetryableDelivery(detail, f"HTTP {status}")
    raise PermanentDelivery(detail, f"HTTP {status}")


class HTTPDestination:
    """POSTs (or PUTs) the payload with the configured headers."""

    def __init__(self, config: HTTPDestinationConfig) -> None:
        self.name = config.name
        self._config = config
        verify = client_context(config.tls) or True
        self._client = httpx.AsyncClient(timeout=config.timeout_seconds, verify=verify)

    async def send(self, payload: bytes, media_type: str) -> str:
        headers = {"Content-Type": media_type, **self._config.headers}
        try:  # httpx's timeout is per phase (connect, each read and write): bound the whole request
            async with asyncio.timeout(self._config.timeout_seconds):
                response = await self._client.request(
                    self._config.method, self._config.url, content=payload, headers=headers
                )
        except TimeoutError as exc:
            raise RetryableDelivery(*[f"no answer within {self._config.timeout_seconds:g} s"] * 2) from exc
        except httpx.TransportError as exc:
            raise RetryableDelivery(f"{type(exc).__name__}: {exc}", type(exc).__name__) from exc
        return classify_status(response.status_code, response.text)

    async def close(self) -> None:
        await self._client.aclose()


register_destination("http", HTTPDestination)
