"""Indexing one received image: the single transaction behind a C-STORE success.

In one transaction, the caller committing: the instance is indexed
(:func:`~engine.domain.instances.index_instance_row`); then, only when something was indexed
(a new instance or a new version, not a resend), its study is linked to the matched order
(:func:`~engine.domain.reconciler.reconcile_indexed`), its copies recorded and the copy owed to
a secondary location queued (:func:`~engine.archive.replication.record_copies`), and one
outbox row queued per forwarding destination (:func:`~engine.domain.routing.route_indexed`).
The steps after the index take the rows it wrote from its :class:`~engine.domain.instances.Indexed`
result and read none of them again: an image of a known series costs five statements to
index and one per copy record and per outbox row (tests/domain/test_ingest.py counts them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection

from engine.archive.replication import record_copies
from engine.config.models import DicomDestinationConfig
from engine.domain.instances import DuplicatePolicy, IndexOutcome, InstanceAttributes, StoredFile, index_instance_row
from engine.domain.reconcile import OrderMatch
from engine.domain.reconciler import reconcile_indexed
from engine.domain.routing import route_indexed

__all__ = ["index_received"]


def index_received(conn: Connection, attrs: InstanceAttributes, stored: StoredFile, policy: DuplicatePolicy, *,
                   match: OrderMatch | None, strict: bool, meta_sha256: str, replicate: bool,
                   destinations: Sequence[DicomDestinationConfig], now: datetime) -> tuple[IndexOutcome, int]:
    """Index, link, owe copies and queue forwarding for one stored file; (outcome, outbox rows queued)."""
    indexed = index_instance_row(conn, attrs, stored, policy)
    if not indexed.changed:
        return indexed.outcome, 0
    reconcile_indexed(conn, attrs, indexed, match, strict)
    record_copies(conn, indexed.instance_pk, attrs.sop_instance_uid, stored, meta_sha256, replicate)
    return indexed.outcome, route_indexed(conn, attrs, indexed, stored.received_from_ae, destinations, now)
