"""Tables of reconciliation: orders waiting to be matched against unscheduled studies.

A row of ``reconcile_requests`` is written in the transaction that creates or
changes an order, or changes a patient (ADT), so it survives a crash; the
background job removes it once the studies concerned are reconciled or corrected.
Its ``event_key`` names the correction event for good (a random key written with the
request, never reused, unlike a SQLite row id) and ``trigger`` the ADT event that
asked for it (A47, A40, A08 …; "" for an order).

``correction_adts`` makes the ADT a PACS gets instead of corrected images
(``on_correction: hl7``) idempotent across job runs and crashes: one row per
correction event, destination and corrected identity, unique, written in the
transaction that queues the ADT; the request's rows go when the request does.
``studies.step_pk`` (in :mod:`engine.domain.tables`) and
``instances.received_sha256`` (in :mod:`engine.domain.instance_tables`) belong to
reconciliation too.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, String, Table, UniqueConstraint

from engine.store.schema import Id, UTCDateTime, metadata

__all__ = ["correction_adts", "reconcile_requests"]

reconcile_requests = Table(
    "reconcile_requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # a late order (unscheduled studies it may own), or a patient whose demographics or identity
    # changed (ADT A08/A31, A40, A47: the stored images of the patient's studies are corrected)
    Column("order_pk", Id, ForeignKey("orders.id", ondelete="CASCADE"), nullable=True),
    Column("patient_pk", Id, ForeignKey("patients.id", ondelete="CASCADE"), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("event_key", String(32), nullable=False, default="", server_default=""),
    Column("trigger", String(8), nullable=False, default="", server_default=""),
    Index(None, "order_pk"),
)

correction_adts = Table(
    "correction_adts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_key", String(32), nullable=False),
    Column("destination", String(64), nullable=False),
    # SHA-256 of the corrected identity (engine.domain.correction_message.CorrectedPatient)
    Column("patient_key", String(64), nullable=False),
    Column("outbox_pk", Id, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("event_key", "destination", "patient_key"),
)
