"""The pure half of a channel: from one message's text to a decision.

Nothing here touches the database or a socket: tokenizing, validation,
filtering and mapping run on values and produce a :class:`Prepared` that the
persistence step writes. Any failure becomes an ``outcome`` with the error
that decides the ACK; no exception escapes for bad input.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.config.models import ChannelConfig
from engine.errors import ErrorLocation, HL7Error, HL7Reject
from engine.filters import accepts
from engine.hl7.er7 import Message, unescape
from engine.hl7.structure import defined_segments
from engine.hl7.validate import AcceptPolicy, validate

__all__ = ["ERROR", "FILTERED", "PROCESSED", "REJECTED", "MapFn", "Prepared", "Preparer"]

log = logging.getLogger(__name__)

PROCESSED = "PROCESSED"
FILTERED = "FILTERED"
ERROR = "ERROR"
REJECTED = "REJECTED"

#: A compiled mapping as the channel sees it: message → records (raises HL7Error).
MapFn = Callable[[Message], list[dict[str, Any]]]


@dataclass(slots=True)
class Prepared:
    """One message ready to persist."""

    message: Message
    raw: bytes
    charset: str
    status: str
    error: HL7Error | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    patient_id: str = ""
    accession_number: str = ""
    body_hash: str = ""
    notes: list[str] = field(default_factory=list)  # what the reader tolerated, kept with the message

    @property
    def sender(self) -> str:
        """Dedup key part: sending application and facility."""
        return f"{self.message.sending_application}|{self.message.sending_facility}"


def _first(message: Message, *paths: tuple[str, int, int]) -> str:
    for seg_name, fld, comp in paths:
        seg = message.segment(seg_name)
        value = unescape(seg.value(fld, 1, comp), message.seps) if seg else ""
        if value:
            return value
    return ""


class Preparer:
    """Validation policy, filter and mapping of one channel."""

    def __init__(self, config: ChannelConfig, mapping: MapFn | None = None) -> None:
        self.config = config
        self.mapping = mapping
        a = config.accept
        self.policy = AcceptPolicy(
            tuple(a.message_types), tuple(a.processing_ids), tuple(a.versions), a.structure, a.datatypes,
            a.timestamps,
        )
        defined_segments()  # loaded now, not on the event loop when the first lone-LF message arrives

    def prepare(self, text: str, raw: bytes, charset: str, notes: tuple[str, ...] = ()) -> Prepared:
        """Tokenize, validate, filter and map ``text``.

        ``notes``: what was tolerated before the message was cut out of its frame (a stray
        line before MSH); validation adds what it tolerated in the fields.
        """
        message = Message(text)
        prepared = Prepared(message, raw, charset, PROCESSED, notes=list(notes))
        prepared.body_hash = hashlib.sha256(message.text.encode("utf-8", "surrogatepass")).hexdigest()
        if message.msh is not None:  # keys first: a message answered AE is still found by patient
            prepared.patient_id = _first(message, ("PID", 3, 1))[:64]
            prepared.accession_number = _first(message, ("IPC", 1, 1), ("OBR", 18, 1))[:64]
        try:
            prepared.notes += validate(message, self.policy)
        except HL7Error as exc:
            prepared.status = REJECTED if exc.ack_code == "AR" else ERROR
            prepared.error = exc
            return prepared
        if not accepts(message, self.config.filter):
            prepared.status = FILTERED
            if self.config.filter.action == "reject":
                prepared.status = REJECTED
                prepared.error = _filtered_reject(message)
            return prepared
        if self.mapping is not None:
            self._map(prepared)
        return prepared

    def _map(self, prepared: Prepared) -> None:
        assert self.mapping is not None
        try:
            prepared.records = self.mapping(prepared.message)
        except HL7Error as exc:
            prepared.status = ERROR
            prepared.error = exc
        except Exception as exc:  # a mapping bug must not kill the listener
            log.exception("mapping failed on channel %s", self.config.name)
            prepared.status = ERROR
            prepared.error = HL7Error(207, f"mapping failed: {type(exc).__name__}")


def _filtered_reject(message: Message) -> HL7Error:
    return HL7Reject(200, f"{message.message_type} is not accepted by this channel", ErrorLocation("MSH", 1, 9))
