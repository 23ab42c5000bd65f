"""Corrected images reach the DICOM destinations again, per destination's ``on_correction`` (PIR, #13).

When the background job rewrites a stored instance (an ADT correction, an order
update, a late order), :func:`queue_correction` runs in the transaction that points
the instance at its new file, so the follow-up is owed exactly when the correction is
indexed: a crash before that commit redoes the correction (and queues then), a crash
after it finds the image already correct and queues nothing again.

For each destination the image was routed to when it was stored
(:func:`~engine.domain.routing.destinations_for`, same rules):

- ``resend``: one outbox row naming the instance (an
  :class:`~engine.domain.routing.InstanceRef`); the sender reads the corrected file;
- ``hl7``: when the correction changed the patient's attributes, one ADT (A08; A47 or
  A40 when the identifier changed, after an A47 or otherwise;
  :mod:`engine.domain.correction_message`) to ``correction_hl7_destination``, once per
  correction event, destination and corrected identity however many images changed,
  in however many batches, job runs or restarts after a crash: its key is unique in
  ``correction_adts`` and written in the transaction that queues it, so a batch that
  finds the key taken queues nothing. A change of order attributes alone sends nothing
  (the PACS has the order feed for those);
- ``none``: nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, exists, insert, select

from engine.config.models import DicomDestinationConfig, EngineConfig
from engine.domain.correction_message import PATIENT_KEYWORDS, CorrectedPatient, build_correction_adt
from engine.domain.instance_tables import instances
from engine.domain.instances import InstanceAttributes
from engine.domain.reconcile_tables import correction_adts
from engine.domain.routing import (
    FORWARD_CHANNEL,
    INSTANCE_REF_MEDIA_TYPE,
    InstanceRef,
    StoreOrigin,
    destinations_for,
    forwarding_destinations,
)
from engine.outbox.queue import enqueue

__all__ = ["ADT_CHANNEL", "Correction", "CorrectionEvent", "CorrectionPolicy", "queue_correction"]

#: the outbox ``channel`` of correction ADTs.
ADT_CHANNEL = "reconcile"


@dataclass(frozen=True, slots=True)
class Correction:
    """One instance just rewritten: what changed, and its patient as it now reads."""

    instance_pk: int
    attrs: InstanceAttributes
    changed: tuple[str, ...]
    patient: CorrectedPatient


@dataclass(frozen=True, slots=True)
class CorrectionEvent:
    """The request a correction answers: its lasting key and the ADT event that asked ("" for an order)."""

    key: str
    trigger: str = ""


@dataclass(frozen=True, slots=True)
class CorrectionPolicy:
    """The DICOM destinations that are on, and the sending application of correction ADTs."""

    destinations: tuple[DicomDestinationConfig, ...]
    sending_application: str = "RADBRIDGE"

    @classmethod
    def from_config(cls, config: EngineConfig) -> CorrectionPolicy:
        """From engine.yaml's DICOM destinations (those with a host) and the DICOM AE title."""
        return cls(forwarding_destinations(config.destinations), config.dicom.ae_title)


def _resend(conn: Connection, c: Correction, d: DicomDestinationConfig, now: datetime) -> None:
    version = int(conn.execute(select(instances.c.versions).where(instances.c.id == c.instance_pk)).scalar_one())
    key = c.attrs.study_instance_uid if d.ordering_key == "study_instance_uid" else ""
    enqueue(conn, channel=FORWARD_CHANNEL, destination=d.name, media_type=INSTANCE_REF_MEDIA_TYPE,
            payload=InstanceRef(c.instance_pk, version, c.attrs.sop_instance_uid).encode(), ordering_key=key,
            now=now)


def _adt(conn: Connection, c: Correction, d: DicomDestinationConfig, policy: CorrectionPolicy,
         event: CorrectionEvent, now: datetime) -> bool:
    target = d.correction_hl7_destination
    if not PATIENT_KEYWORDS.intersection(c.changed):
        return False
    a = correction_adts.c
    key = {"event_key": event.key, "destination": target, "patient_key": c.patient.key}
    if conn.execute(select(exists().where(*(a[k] == v for k, v in key.items())))).scalar():
        return False  # queued by an earlier batch, run or process before a crash
    outbox_pk = enqueue(conn, channel=ADT_CHANNEL, destination=target, media_type="application/hl7-v2",
                        payload=build_correction_adt(c.patient, policy.sending_application, now, event.trigger,
                                                     event.key),
                        ordering_key=c.patient.patient_id, now=now)
    conn.execute(insert(correction_adts).values(**key, outbox_pk=outbox_pk, created_at=now))
    return True


def queue_correction(conn: Connection, corrections: Sequence[Correction], received_from: dict[int, str],
                     policy: CorrectionPolicy, now: datetime, event: CorrectionEvent | None = None) -> int:
    """Queue what each destination's ``on_correction`` asks for (caller's transaction); rows queued.

    ``received_from`` maps instance pk to the AE title that sent it (routing rules may test it);
    ``event`` is the correction event (the ADT of ``hl7`` is queued once per event, destination and
    identity; without one, each call is its own event).
    """
    event = event or CorrectionEvent(uuid.uuid4().hex)
    queued = 0
    for c in corrections:
        origin = StoreOrigin(received_from.get(c.instance_pk, ""))
        for d in destinations_for(policy.destinations, c.attrs, origin):
            if d.on_correction == "resend":
                _resend(conn, c, d, now)
                queued += 1
            elif d.on_correction == "hl7":
                queued += _adt(conn, c, d, policy, event, now)
    return queued
