"""Handlers: the domain services a channel runs on each accepted message.

A handler runs inside the channel's database transaction, after the message
row is written and before the ACK is built, so everything it changes commits
together with the message (ARCHITECTURE "durable before acknowledged"). It
raises :class:`~engine.errors.HL7ApplicationError` to answer AE; its changes
are then rolled back and the message is kept with status ERROR.

Handlers register by name through :func:`register_handler`, the same door for
built-in and site-specific ones; a channel lists them in ``handlers:``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection

from engine.hl7.er7 import Message

if TYPE_CHECKING:
    from engine.config.models import ChannelConfig, EngineConfig

__all__ = [
    "Handler",
    "HandlerFactory",
    "InboundContext",
    "Outbound",
    "Outcome",
    "create_handler",
    "handler_names",
    "register_handler",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a handler did with one record: changed the domain, or not and why.

    The channel stores the notes on the message (``messages show``) and marks a
    message UNCHANGED when every outcome says nothing changed (``status`` counts it).
    """

    changed: bool
    note: str = ""
    #: The patient id and accession number of what the record applied to, when the handler knows them:
    #: a message that did not carry them (an ORC-only cancel, an ORU without PID) is then listed under
    #: them (``messages list --patient-id``) and ordered with them in the outbox.
    patient_id: str = ""
    accession_number: str = ""


@dataclass(frozen=True, slots=True)
class InboundContext:
    """One accepted inbound message as handlers see it."""

    message_id: int
    channel: str
    message: Message
    received_at: datetime
    records: list[dict[str, Any]] = field(default_factory=list)
    #: Scratch space the handlers of this one message share (e.g. the patient pks the
    #: ``patients`` handler upserted, so ``orders`` need not look them up again).
    shared: dict[str, Any] = field(default_factory=dict)
    #: One entry per record a handler applied (or deliberately left alone).
    outcomes: list[Outcome] = field(default_factory=list)

    def note(self, changed: bool, note: str = "", *, patient_id: str = "", accession_number: str = "") -> None:
        """Report the outcome of one record (and, when known, whose and which order it was)."""
        self.outcomes.append(Outcome(changed, note, patient_id, accession_number))


@dataclass(frozen=True, slots=True)
class Outbound:
    """Work a handler asks the outbox to deliver (to a named destination)."""

    destination: str
    payload: bytes
    media_type: str = "application/hl7-v2"
    ordering_key: str = ""


class Handler(Protocol):
    """A domain service applied to each accepted message of a channel."""

    name: str

    def apply(self, conn: Connection, ctx: InboundContext) -> list[Outbound]:
        """Apply ``ctx`` to the domain; return outbound work (may be empty)."""
        ...


HandlerFactory = Callable[["EngineConfig", "ChannelConfig"], Handler]

_REGISTRY: dict[str, HandlerFactory] = {}


def register_handler(name: str, factory: HandlerFactory) -> None:
    """Make ``name`` usable in a channel's ``handlers:`` list."""
    if name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"handler {name!r} is already registered")
    _REGISTRY[name] = factory


def handler_names() -> list[str]:
    """Registered handler names, sorted."""
    return sorted(_REGISTRY)


def create_handler(name: str, engine: EngineConfig, channel: ChannelConfig) -> Handler:
    """Instantiate a registered handler for a channel."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown handler {name!r}; known: {', '.join(handler_names()) or 'none'}") from None
    return factory(engine, channel)
