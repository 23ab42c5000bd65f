"""The archive's record of each instance's copies: fixity and where the copies stand.

One ``instance_copies`` row per indexed instance, written in the transaction
that indexes it (:mod:`engine.archive.replication`). ``meta_sha256`` is the
SHA-256 of the File Meta Information written at ingest (the dataset's SHA-256
is ``instances.sha256``): together they cover every byte of the stored file.

``primary_state``: PRESENT, TIERING (being removed: marked before the file is
deleted, TIERED after), TIERED (removed on purpose once the secondary copy
was verified), MISSING or DAMAGED (found so by a check). ``secondary_state``:
NONE (no secondary configured), PENDING (copy queued in the outbox), VERIFIED,
MISSING or DAMAGED.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, String, Table

from engine.store.schema import Id, UTCDateTime, metadata

__all__ = ["PRIMARY_STATES", "SECONDARY_STATES", "instance_copies"]

PRIMARY_STATES = ("PRESENT", "TIERING", "TIERED", "MISSING", "DAMAGED")
SECONDARY_STATES = ("NONE", "PENDING", "VERIFIED", "MISSING", "DAMAGED")

instance_copies = Table(
    "instance_copies",
    metadata,
    Column("instance_pk", Id, ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True),
    Column("meta_sha256", String(64), nullable=False),
    Column("primary_state", String(16), nullable=False, default="PRESENT"),
    Column("secondary_state", String(16), nullable=False, default="NONE"),
    Column("secondary_verified_at", UTCDateTime(), nullable=True),
    Column("primary_removed_at", UTCDateTime(), nullable=True),
    Column("checked_at", UTCDateTime(), nullable=True),
    Index(None, "secondary_state"),
    Index(None, "checked_at"),
)
