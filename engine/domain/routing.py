"""Which DICOM destinations a stored image goes to, and queuing it in the indexing transaction.

:func:`destinations_for` is pure: a stored image (its header attributes and the
calling AE title) against each DICOM destination's ``routes`` (no rule: every
image; else the images matching any rule, a rule matching when every criterion
it lists does). :func:`index_and_route` indexes the instance
(:func:`~engine.domain.instances.index_instance`) and, when something was
indexed (a new instance or a new version), adds one outbox row per chosen
destination in the same transaction: an image that got success is never left
unqueued, and one that did not is never queued.

The row's payload is an :class:`InstanceRef` (instance pk and version), not
the file: the sender reads the instance's *current* file when it sends, so a
correction stored in between is what leaves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from engine.config.models import DicomDestinationConfig, ImageRouteRule
from engine.domain.instances import (
    DuplicatePolicy,
    Indexed,
    IndexOutcome,
    InstanceAttributes,
    StoredFile,
    index_instance_row,
)
from engine.outbox.queue import enqueue

__all__ = [
    "INSTANCE_REF_MEDIA_TYPE",
    "InstanceRef",
    "StoreOrigin",
    "destinations_for",
    "forwarding_destinations",
    "index_and_route",
    "route_indexed",
    "rule_matches",
]

#: media_type of an outbox row whose payload is an :class:`InstanceRef`.
INSTANCE_REF_MEDIA_TYPE = "application/vnd.radbridge.instance-ref+json"
#: the outbox ``channel`` of forwarded images: they come from the DICOM listener, not a channel.
FORWARD_CHANNEL = "dicom"


@dataclass(frozen=True, slots=True)
class StoreOrigin:
    """Where a stored image came from (what routing rules may test besides the header)."""

    calling_ae_title: str


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """An outbox payload naming a stored instance; ``version`` is the one queued (for the record)."""

    instance_pk: int
    version: int
    sop_instance_uid: str

    def encode(self) -> bytes:
        """The payload bytes (JSON)."""
        return json.dumps({"instance_pk": self.instance_pk, "version": self.version,
                           "sop_instance_uid": self.sop_instance_uid}, sort_keys=True).encode("ascii")

    @classmethod
    def decode(cls, payload: bytes) -> InstanceRef:
        """Read a payload written by :meth:`encode`; ValueError if it is not one."""
        try:
            data = json.loads(payload)
            return cls(int(data["instance_pk"]), int(data["version"]), str(data["sop_instance_uid"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not an instance reference: {exc}") from exc


def _listed(value: str, allowed: Sequence[str]) -> bool:
    return not allowed or value in allowed


def rule_matches(rule: ImageRouteRule, attrs: InstanceAttributes, origin: StoreOrigin) -> bool:
    """True when every criterion ``rule`` lists holds for the image (modality compared case-blind)."""
    modalities = [m.upper() for m in rule.modalities]
    return (_listed(attrs.modality.upper(), modalities)
            and _listed(origin.calling_ae_title, rule.calling_ae_titles)
            and _listed(attrs.sop_class_uid, rule.sop_classes))


def forwarding_destinations(destinations: Sequence[object]) -> tuple[DicomDestinationConfig, ...]:
    """The DICOM destinations that are on (a host is set) among engine.yaml's ``destinations``."""
    return tuple(d for d in destinations if isinstance(d, DicomDestinationConfig) and d.host)


def destinations_for(destinations: Sequence[DicomDestinationConfig], attrs: InstanceAttributes,
                     origin: StoreOrigin) -> list[DicomDestinationConfig]:
    """The destinations ``attrs`` goes to, in configuration order."""
    return [d for d in destinations if not d.routes or any(rule_matches(r, attrs, origin) for r in d.routes)]


def index_and_route(conn: Connection, attrs: InstanceAttributes, stored: StoredFile, policy: DuplicatePolicy,
                    destinations: Sequence[DicomDestinationConfig], now: datetime,
                    index: Callable[..., Indexed] = index_instance_row) -> tuple[IndexOutcome, int]:
    """Index ``stored`` (``index``: :func:`index_instance_row`) and queue it for its destinations
    (:func:`route_indexed`); (outcome, rows queued). The caller commits."""
    indexed = index(conn, attrs, stored, policy)
    return indexed.outcome, route_indexed(conn, attrs, indexed, stored.received_from_ae, destinations, now)


def route_indexed(conn: Connection, attrs: InstanceAttributes, indexed: Indexed, calling_ae: str,
                  destinations: Sequence[DicomDestinationConfig], now: datetime) -> int:
    """For an instance just indexed (``indexed``): one outbox row per destination it goes to; how many.
    Nothing when nothing was indexed (a resend, a refused duplicate). The caller commits."""
    chosen = destinations_for(destinations, attrs, StoreOrigin(calling_ae))
    if not indexed.changed or not chosen:
        return 0
    payload = InstanceRef(indexed.instance_pk, indexed.version, attrs.sop_instance_uid).encode()
    for destination in chosen:
        key = attrs.study_instance_uid if destination.ordering_key == "study_instance_uid" else ""
        enqueue(conn, channel=FORWARD_CHANNEL, destination=destination.name, payload=payload,
                media_type=INSTANCE_REF_MEDIA_TYPE, ordering_key=key, now=now)
    return len(chosen)
