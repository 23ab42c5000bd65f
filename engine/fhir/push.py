"""Queueing FHIR push deliveries when the projector stores a new version (no I/O here).

A push destination (``type: fhir`` in engine.yaml) subscribes to resource types. In the
transaction that stores new versions, :func:`enqueue_stored` adds one outbox row per
(destination, new version). The row names the resource and the version, not its JSON:
the destination reads the current version when it sends, so a row whose resource has
moved on is settled without a request (the newer version has its own row, later in the
queue). Several queued versions therefore cost one push, and an older version never
reaches the server after a newer one.

A resource the projector removes (its domain rows no longer make it: a scheduled
ImagingStudy superseded by the study the modality sent under its own UID) gets a
removal row, :func:`enqueue_removed`, in the same transaction and under the same
ordering key: it carries the identifiers the resource had, since nothing of it is
stored any more when the row is sent (a conditional delete on the server).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, select, tuple_

from engine.fhir.model import Built
from engine.fhir.tables import fhir_resources
from engine.outbox.queue import enqueue

__all__ = ["CHANNEL", "MEDIA_TYPE", "PushRef", "PushSubscription", "enqueue_removed", "enqueue_stored",
           "ordering_key"]

#: Media type of a push row's payload: ``{"type": …, "id": …, "version": …}``.
MEDIA_TYPE = "application/x-radbridge-fhir-version+json"
#: The ``channel`` column of push rows (they come from the projector, not a channel).
CHANNEL = "fhir-projector"

OrderingRule = Literal["patient", "resource", "none"]


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """One push destination: its name, the resource types it takes, and its ordering rule."""

    destination: str
    resource_types: frozenset[str]
    ordering: OrderingRule = "patient"


@dataclass(frozen=True, slots=True)
class PushRef:
    """What a push row names: a stored resource's type, id and version; or (``removed``) a resource that is
    gone, with the identifiers it had (``version`` 0)."""

    res_type: str
    res_id: str
    version: int
    removed: bool = False
    identifiers: tuple[dict[str, Any], ...] = ()

    def encode(self) -> bytes:
        """The row's payload."""
        value: dict[str, Any] = {"type": self.res_type, "id": self.res_id, "version": self.version}
        if self.removed:
            value |= {"removed": True, "identifier": list(self.identifiers)}
        return json.dumps(value).encode()

    @classmethod
    def decode(cls, payload: bytes) -> PushRef:
        """Read a payload written by :meth:`encode`; ValueError if it is not one."""
        try:
            value = json.loads(payload)
            found = cls(str(value["type"]), str(value["id"]), int(value["version"]), bool(value.get("removed")),
                        tuple(dict(i) for i in value.get("identifier", [])))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a FHIR push row: {exc}") from exc
        return found


def _patient_of(body: dict[str, Any]) -> str:
    """The literal Patient reference a resource belongs to, or ''."""
    if body.get("resourceType") == "Patient":
        return f"Patient/{body.get('id', '')}"
    for element in ("subject", "patient"):
        ref = body.get(element)
        if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Patient/"):
            return str(ref["reference"])
    return ""


def ordering_key(built: Built, rule: OrderingRule) -> str:
    """The outbox ordering key of a push of ``built`` under ``rule``.

    ``patient``: the patient's reference (a resource with none is ordered by itself);
    ``resource``: ``Type/id``; ``none``: no ordering.
    """
    if rule == "none":
        return ""
    own = f"{built.res_type}/{built.res_id}"
    if rule == "resource":
        return own
    return _patient_of(built.body) or own


def _versions(conn: Connection, keys: list[tuple[str, str]], stamp: str) -> dict[tuple[str, str], int]:
    """The versions stored at ``stamp`` among ``keys`` (the ones this transaction wrote)."""
    r = fhir_resources.c
    found: dict[tuple[str, str], int] = {}
    for start in range(0, len(keys), 500):
        rows = conn.execute(select(r.res_type, r.res_id, r.version_id)
                            .where(tuple_(r.res_type, r.res_id).in_(keys[start:start + 500]), r.last_updated == stamp))
        found.update(((row.res_type, row.res_id), int(row.version_id)) for row in rows)
    return found


def enqueue_stored(conn: Connection, built: Sequence[Built], stamp: str,
                   subscriptions: Sequence[PushSubscription]) -> int:
    """Queue a push of every resource of ``built`` stored as a new version at ``stamp``; return rows added.

    Runs in the projector's write transaction, after the resources are written, so the rows
    commit (or roll back) with the versions they name.
    """
    wanted = {b.res_type for b in built} & {t for s in subscriptions for t in s.resource_types}
    if not wanted:
        return 0
    candidates = [b for b in built if b.res_type in wanted]
    stored = _versions(conn, [(b.res_type, b.res_id) for b in candidates], stamp)
    added = 0
    for item in candidates:
        version = stored.get((item.res_type, item.res_id))
        if version is None:
            continue  # unchanged: no new version, nothing to push
        payload = PushRef(item.res_type, item.res_id, version).encode()
        for sub in subscriptions:
            if item.res_type in sub.resource_types:
                enqueue(conn, channel=CHANNEL, destination=sub.destination, payload=payload, media_type=MEDIA_TYPE,
                        ordering_key=ordering_key(item, sub.ordering))
                added += 1
    return added


def enqueue_removed(conn: Connection, res_type: str, res_id: str,
                    subscriptions: Sequence[PushSubscription]) -> int:
    """Queue a removal of the stored ``res_type/res_id`` for each subscription to its type; return rows added.

    Call it in the projector's write transaction before the resource is deleted: the row keeps the
    identifiers the server knows the resource by and its last ordering key (after the pushes of its
    earlier versions).
    """
    wanted = [sub for sub in subscriptions if res_type in sub.resource_types]
    if not wanted:
        return 0
    r = fhir_resources.c
    stored = conn.execute(select(r.json).where(r.res_type == res_type, r.res_id == res_id)).scalar()
    if stored is None:
        return 0
    body = json.loads(stored)
    identifiers = tuple(i for i in body.get("identifier", []) if isinstance(i, dict))
    payload = PushRef(res_type, res_id, 0, True, identifiers).encode()
    last = Built(res_type, res_id, body)
    for sub in wanted:
        enqueue(conn, channel=CHANNEL, destination=sub.destination, payload=payload, media_type=MEDIA_TYPE,
                ordering_key=ordering_key(last, sub.ordering))
    return len(wanted)
