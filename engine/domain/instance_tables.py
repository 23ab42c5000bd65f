"""Tables of stored DICOM instances (C-STORE): the instance index, replaced versions, quarantine.

``instances`` is the third level of the study index (``studies`` → ``series`` →
``instances``); a row exists only for a file that was durably in place before
the row was committed. ``location`` names the storage location and ``path``
the file inside it. ``sha256``/``size`` cover the dataset as received (the file
after its File Meta Information), so an identical resend from another AE is
recognised. A replaced version keeps its file and gets an
``instance_versions`` row, which also records where that version's copies are
(the archive's history, checked by fixity). ``quarantined_instances`` indexes what was refused
and kept for inspection.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, String, Table, Text

from engine.store.schema import Id, UTCDateTime, metadata

__all__ = ["instance_versions", "instances", "quarantined_instances"]

instances = Table(
    "instances",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("study_pk", Id, ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    Column("series_pk", Id, ForeignKey("series.id", ondelete="CASCADE"), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer, nullable=True),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("location", String(32), nullable=False),
    Column("path", String(512), nullable=False),
    Column("received_from_ae", String(16), nullable=False, default=""),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("versions", Integer, nullable=False, default=1),
    # the dataset as received, when reconciliation stored a coerced one ("": the same as sha256)
    Column("received_sha256", String(64), nullable=False, default="", server_default=""),
    Index(None, "series_pk"),
    Index(None, "study_pk"),
)

instance_versions = Table(
    "instance_versions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("instance_pk", Id, ForeignKey("instances.id", ondelete="CASCADE"), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("location", String(32), nullable=False),
    Column("path", String(512), nullable=False),
    Column("received_from_ae", String(16), nullable=False, default=""),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("replaced_at", UTCDateTime(), nullable=False),
    # where the version's copies stood when it was replaced, then as fixity found them (the states of
    # engine.archive.copy_tables; NULL: replaced before 0019 recorded them, checked as if PRESENT/VERIFIED)
    Column("primary_state", String(16), nullable=True),
    Column("secondary_state", String(16), nullable=True),
    Column("checked_at", UTCDateTime(), nullable=True),
    Index(None, "instance_pk"),
)

quarantined_instances = Table(
    "quarantined_instances",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("received_from_ae", String(16), nullable=False, default=""),
    Column("sop_class_uid", String(64), nullable=False, default=""),
    Column("sop_instance_uid", String(64), nullable=False, default=""),
    Column("transfer_syntax_uid", String(64), nullable=False, default=""),
    Column("status", Integer, nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("location", String(32), nullable=False),
    Column("path", String(512), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Index(None, "received_at"),
    Index(None, "sop_instance_uid"),
)
