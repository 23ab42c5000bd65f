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
- ``hl7``: when the correction changed the patient's attributes, one ADT (A08, or A40
  when the identifier changed; :mod:`engine.domain.correction_message`) to
  ``correction_hl7_destination``, once per patient and job run however many images
  changed; a change of order attributes alone sends nothing (the PACS has the order
  feed for those);
- ``none``: nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, select

from engine.config.models import DicomDestinationConfig, EngineConfig
from engine.domain.correction_message import PATIENT_KEYWORDS, CorrectedPatient, build_correction_adt
from engine.domain.instance_tables import instances
from engine.domain.instances import InstanceAttributes
from engine.domain.routing import (
    FORWARD_CHANNEL,
    INSTANCE_REF_MEDIA_TYPE,
    InstanceRef,
    StoreOrigin,
    destinations_for,
    forwarding_destinations,
)
from engine.outbox.queue import enqueue

__all__ = ["ADT_CHANNEL", "Correction", "CorrectionPolicy", "queue_correction"]

#: the outbox ``channel`` of correction ADTs.
ADT_CHANNEL = "reconcile"


@dataclass(frozen=True, slots=True)
class Correction:
    """One instance just rewritten: what changed, and its patient as it now reads."""

    instance_pk: int
    attrs: InstanceAttributes
    changed: tuple[str, ...]
    patient: CorrectedPatient


@dataclass(slots=True)
class CorrectionPolicy:
    """The DICOM destinations that are on, and the ADTs already queued in this job run."""

    destinations: tuple[DicomDestinationConfig, ...]
    sending_application: str = "RADBRIDGE"
    adts_queued: set[tuple[str, CorrectedPatient]] = field(default_factory=set)

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
         now: datetime) -> bool:
    target = d.correction_hl7_destination
    if not PATIENT_KEYWORDS.intersection(c.changed) or (target, c.patient) in policy.adts_queued:
        return False
    enqueue(conn, channel=ADT_CHANNEL, destination=target, media_type="application/hl7-v2",
            payload=build_correction_adt(c.patient, policy.sending_application, now),
            ordering_key=c.patient.patient_id, now=now)
    policy.adts_queued.add((target, c.patient))
    return True


def queue_correction(conn: Connection, corrections: Sequence[Correction], received_from: dict[int, str],
                     policy: CorrectionPolicy, now: datetime) -> int:
    """Queue what each destination's ``on_correction`` asks for (caller's transaction); rows queued.

    ``received_from`` maps instance pk to the AE title that sent it (routing rules may test it).
    """
    queued = 0
    for c in corrections:
        origin = StoreOrigin(received_from.get(c.instance_pk, ""))
        for d in destinations_for(policy.destinations, c.attrs, origin):
            if d.on_correction == "resend":
                _resend(conn, c, d, now)
                queued += 1
            elif d.on_correction == "hl7":
                queued += _adt(conn, c, d, policy, now)
    return queued
