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

A replaced version keeps its copies: :func:`replaced_version_copies` gives its
``instance_versions`` row the states its copies had when it was replaced.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Connection, ForeignKey, Index, String, Table, select

from engine.store.schema import Id, UTCDateTime, metadata

__all__ = ["PRIMARY_STATES", "SECONDARY_STATES", "instance_copies", "replaced_version_copies"]

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


#: A current copy's state -> the state of that copy once its version is replaced (a removal from the
#: primary that was under way completes or leaves an orphan: either way it is no longer expected there).
_REPLACED_PRIMARY = {"TIERING": "TIERED"}


def replaced_version_copies(conn: Connection, instance_pk: int) -> dict[str, Any]:
    """The ``primary_state``/``secondary_state`` of the ``instance_versions`` row of the version of
    ``instance_pk`` being replaced now (call before its ``instance_copies`` row is reset); empty when its
    copies were never recorded (NULL states: checked as if in both locations)."""
    c = instance_copies.c
    row = conn.execute(select(c.primary_state, c.secondary_state).where(c.instance_pk == instance_pk)).first()
    if row is None:
        return {}
    return {"primary_state": _REPLACED_PRIMARY.get(row.primary_state, row.primary_state),
            "secondary_state": row.secondary_state}
