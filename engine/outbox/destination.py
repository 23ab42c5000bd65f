"""Destinations: make one delivery attempt and classify it. Nothing else.

Queueing, ordering, backoff and dead letters belong to the outbox worker. A
destination returns the peer's response text on success, raises
:class:`~engine.errors.RetryableDelivery` when a later attempt may succeed and
:class:`~engine.errors.PermanentDelivery` when it cannot. Destination types
register through :func:`register_destination`, built-ins included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Destination", "create_destination", "register_destination"]


class Destination(Protocol):
    """One configured delivery target."""

    name: str

    async def send(self, payload: bytes, media_type: str) -> str:
        """Deliver ``payload`` once; return the response text or raise a DeliveryError."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


DestinationFactory = Callable[[Any], Destination]
_REGISTRY: dict[str, DestinationFactory] = {}


def register_destination(type_name: str, factory: DestinationFactory) -> None:
    """Make ``type:`` ``type_name`` usable in channel files."""
    _REGISTRY[type_name] = factory


def create_destination(config: Any) -> Destination:
    """Build the destination for a validated destination config (has ``type``)."""
    if not _REGISTRY:
        import channels.http.destination
        import channels.mllp.destination  # noqa: F401
    try:
        factory = _REGISTRY[config.type]
    except KeyError:
        raise KeyError(f"unknown destination type {config.type!r}") from None
    return factory(config)
