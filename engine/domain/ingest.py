"""Indexing one received image: the single transaction behind a C-STORE success.

In one transaction, the caller committing: the instance is indexed and its study linked to
the matched order (:func:`~engine.domain.reconciler.index_reconciled`), its copies recorded and
the copy owed to a secondary location queued (:func:`~engine.archive.replication.index_and_replicate`),
and one outbox row queued per forwarding destination (:func:`~engine.domain.routing.index_and_route`).
Each step wraps the one before it, so a step runs only for an instance that was actually
stored or replaced.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection

from engine.archive.replication import index_and_replicate
from engine.config.models import DicomDestinationConfig
from engine.domain.instances import DuplicatePolicy, IndexOutcome, InstanceAttributes, StoredFile
from engine.domain.reconcile import OrderMatch
from engine.domain.reconciler import index_reconciled
from engine.domain.routing import index_and_route

__all__ = ["index_received"]


def index_received(conn: Connection, attrs: InstanceAttributes, stored: StoredFile, policy: DuplicatePolicy, *,
                   match: OrderMatch | None, strict: bool, meta_sha256: str, replicate: bool,
                   destinations: Sequence[DicomDestinationConfig], now: datetime) -> tuple[IndexOutcome, int]:
    """Index, link, owe copies and queue forwarding for one stored file; (outcome, outbox rows queued)."""
    linked = functools.partial(index_reconciled, match=match, strict=strict)
    replicated = functools.partial(index_and_replicate, meta_sha256=meta_sha256, replicate=replicate, index=linked)
    return index_and_route(conn, attrs, stored, policy, destinations, now, index=replicated)
