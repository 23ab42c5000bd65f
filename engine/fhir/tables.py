"""Tables of the FHIR facade: materialised resources, their versions, search indexes, pending changes.

``fhir_resources`` holds each resource's current JSON exactly as served (``meta``
included), one row per (type, id); its ``id`` column is the surrogate key the
index tables point at and the order of search results (stable keyset paging).
``fhir_versions`` keeps every version for vread and ``_history``.

The index tables are what searches run on, in SQL (never by loading resources):

* ``fhir_tokens``: token parameters (identifier, status, modality …): system and code;
* ``fhir_refs``: reference parameters (patient, basedon, endpoint …): ``Type/id``;
* ``fhir_dates``: date parameters (started, birthdate …) as a half-open UTC range
  ``[low, high)`` in fixed-width text, so ranges compare alike on every backend;
* ``fhir_strings``: string parameters (name, family …), normalised (case and accents folded).

``fhir_pending`` is the change feed: database triggers on the domain tables
(migration 0015, :mod:`engine.fhir.triggers`) append a row in the transaction
of the change; the projector (:mod:`engine.fhir.projector`) rebuilds the named
resources and deletes the rows it consumed, in one transaction. A crash loses
nothing: the rows stay until their resources are written.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint

from engine.store.schema import Id, metadata

__all__ = ["fhir_dates", "fhir_pending", "fhir_refs", "fhir_resources", "fhir_strings", "fhir_tokens",
           "fhir_versions"]

#: Fixed-width UTC instants: "2026-12-05T10:15:30.000000Z" (27 characters).
INSTANT_LENGTH = 27

fhir_resources = Table(
    "fhir_resources",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("res_type", String(32), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", String(INSTANT_LENGTH), nullable=False),
    Column("content_hash", String(64), nullable=False),  # of the JSON without meta: unchanged → no version
    Column("json", Text, nullable=False),
    UniqueConstraint("res_type", "res_id"),
    Index(None, "res_type", "last_updated"),
)

fhir_versions = Table(
    "fhir_versions",
    metadata,
    Column("resource_pk", Id, ForeignKey("fhir_resources.id", ondelete="CASCADE"), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", String(INSTANT_LENGTH), nullable=False),
    Column("json", Text, nullable=False),
    Index(None, "last_updated", "resource_pk", "version_id"),  # type- and system-level _history, newest first
)

fhir_pending = Table(
    "fhir_pending",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),  # a projector source kind (engine.fhir.registry)
    Column("key", String(64), nullable=False),
)

fhir_tokens = Table(
    "fhir_tokens",
    metadata,
    Column("resource_pk", Id, ForeignKey("fhir_resources.id", ondelete="CASCADE"), nullable=False),
    Column("param", String(64), nullable=False),  # "ImagingStudy.identifier"
    Column("system", String(255), nullable=False, default=""),
    Column("code", String(255), nullable=False),
    # The key before the system: matches of (param, code) come in key order (keyset pages, one-seek checks).
    Index(None, "param", "code", "resource_pk", "system"),
    Index(None, "resource_pk"),
)

fhir_refs = Table(
    "fhir_refs",
    metadata,
    Column("resource_pk", Id, ForeignKey("fhir_resources.id", ondelete="CASCADE"), nullable=False),
    Column("param", String(64), nullable=False),
    Column("target", String(128), nullable=False),  # "Patient/42"
    Index(None, "param", "target", "resource_pk"),
    Index(None, "resource_pk"),
)

fhir_dates = Table(
    "fhir_dates",
    metadata,
    Column("resource_pk", Id, ForeignKey("fhir_resources.id", ondelete="CASCADE"), nullable=False),
    Column("param", String(64), nullable=False),
    Column("low", String(INSTANT_LENGTH), nullable=False),
    Column("high", String(INSTANT_LENGTH), nullable=False),
    Index(None, "param", "low", "resource_pk"),
    Index(None, "resource_pk"),
)

fhir_strings = Table(
    "fhir_strings",
    metadata,
    Column("resource_pk", Id, ForeignKey("fhir_resources.id", ondelete="CASCADE"), nullable=False),
    Column("param", String(64), nullable=False),
    Column("value", String(324), nullable=False),
    Index(None, "param", "value", "resource_pk"),
    Index(None, "resource_pk"),
)
