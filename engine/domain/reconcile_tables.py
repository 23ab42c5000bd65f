"""Tables of reconciliation: orders waiting to be matched against unscheduled studies.

A row of ``reconcile_requests`` is written in the transaction that creates or
changes an order, or changes a patient (ADT), so it survives a crash; the
background job removes it once the studies concerned are reconciled or corrected.
``studies.step_pk`` (in :mod:`engine.domain.tables`) and
``instances.received_sha256`` (in :mod:`engine.domain.instance_tables`) belong to
reconciliation too.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Table

from engine.store.schema import Id, UTCDateTime, metadata

__all__ = ["reconcile_requests"]

reconcile_requests = Table(
    "reconcile_requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # a late order (unscheduled studies it may own), or a patient whose demographics or identity
    # changed (ADT A08/A31, A40, A47: the stored images of the patient's studies are corrected)
    Column("order_pk", Id, ForeignKey("orders.id", ondelete="CASCADE"), nullable=True),
    Column("patient_pk", Id, ForeignKey("patients.id", ondelete="CASCADE"), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Index(None, "order_pk"),
)
