"""Tables of reconciliation: orders waiting to be matched against unscheduled studies.

A row of ``reconcile_requests`` is written in the transaction that creates or
changes an order (so it survives a crash), and removed by the background job
once the unscheduled studies that match the order are reconciled.
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
    Column("order_pk", Id, ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index(None, "order_pk"),
)
