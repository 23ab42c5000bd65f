"""Destinations: make one delivery attempt and classify it. Nothing else.

Queueing, ordering, backoff and dead letters belong to the outbox worker. A
destination returns the peer's response text on success, raises
:class:`~engine.errors.RetryableDelivery` when a later attempt may succeed and
:class:`~engine.errors.PermanentDelivery` when it cannot. Destination types
register through :func:`register_destination`, built-ins included. A type
that needs the engine's store or settings (the DICOM destination reads the
instance it forwards from the archive) registers with ``needs_context=True``
and is built with the :class:`DestinationContext` the runtime passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Destination", "DestinationContext", "create_destination", "register_destination"]


class Destination(Protocol):
    """One configured delivery target."""

    name: str

    async def send(self, payload: bytes, media_type: str) -> str:
        """Deliver ``payload`` once; return the response text or raise a DeliveryError."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True, slots=True)
class DestinationContext:
    """What the running engine lends a destination: its database and engine settings."""

    db: Any  # engine.store.database.Database
    engine: Any  # engine.config.models.EngineConfig


DestinationFactory = Callable[..., Destination]
_REGISTRY: dict[str, tuple[DestinationFactory, bool]] = {}


def register_destination(type_name: str, factory: DestinationFactory, *, needs_context: bool = False) -> None:
    """Make ``type:`` ``type_name`` usable; ``factory(config)``, or ``factory(config, context)``."""
    _REGISTRY[type_name] = (factory, needs_context)


def create_destination(config: Any, context: DestinationContext | None = None) -> Destination:
    """Build the destination for a validated destination config (has ``type``).

    A type registered with ``needs_context`` raises ValueError without a ``context``.
    """
    if not _REGISTRY:
        import channels.dicom.destination
        import channels.fhir.push.destination
        import channels.http.destination
        import channels.mllp.destination  # noqa: F401
    try:
        factory, needs_context = _REGISTRY[config.type]
    except KeyError:
        raise KeyError(f"unknown destination type {config.type!r}") from None
    if not needs_context:
        return factory(config)
    if context is None:
        raise ValueError(f"a {config.type!r} destination needs the engine's context")
    return factory(config, context)
