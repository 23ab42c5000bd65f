"""Tables of radiology reports: one ``reports`` row per report, one ``report_versions`` row per version.

A report is what one OBR group of an ORU^R01 describes, for one order
(``order_pk``; NULL while the order is unknown and the report waits for it,
matched then by the identity columns). Every version the reporting system
sends (preliminary, final, addendum, correction, cancel) is a new
``report_versions`` row, numbered from 1 and never changed afterwards; the
``reports`` row repeats the current version's values so that a FHIR
DiagnosticReport (status, issued, resultsInterpreter, conclusion,
presentedForm, meta.versionId = ``version``, meta.lastUpdated = ``updated_at``)
is one row, and ``_history`` / vread are the versions.

``status`` is the DiagnosticReport status (registered … cancelled),
``result_status`` the HL7 OBR-25 code sent to the EHR (P, F, C, X) and
``reported_status`` OBR-25 exactly as the reporting system wrote it.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint

from engine.store.schema import Id, UTCDateTime, metadata

__all__ = ["report_versions", "reports"]

reports = Table(
    "reports",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("order_pk", Id, ForeignKey("orders.id"), nullable=True),  # NULL: waiting for its order
    Column("patient_pk", Id, ForeignKey("patients.id"), nullable=True),  # the order's patient
    Column("patient_id", String(64), nullable=False),  # PID-3 as the report named it
    Column("issuer", String(64), nullable=False, default=""),
    Column("placer_order_number", String(64), nullable=False, default=""),
    Column("placer_order_namespace", String(64), nullable=False, default=""),
    Column("filler_order_number", String(64), nullable=False, default=""),
    Column("filler_order_namespace", String(64), nullable=False, default=""),
    Column("accession_number", String(64), nullable=False, default=""),
    Column("study_instance_uid", String(64), nullable=False, default=""),
    Column("procedure_code_value", String(64), nullable=False, default=""),
    Column("procedure_coding_scheme", String(64), nullable=False, default=""),
    Column("procedure_code_meaning", String(64), nullable=False, default=""),
    # The current version, repeated from report_versions for reading and searching.
    Column("version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("result_status", String(1), nullable=False),
    Column("interpreter", String(324), nullable=False, default=""),
    Column("observation_datetime", String(26), nullable=False, default=""),
    Column("issued", UTCDateTime(), nullable=False),
    Column("conclusion", Text, nullable=False, default=""),
    Column("text", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index(None, "order_pk"),
    Index(None, "patient_pk"),
    Index(None, "placer_order_number"),
    Index(None, "filler_order_number"),
    Index(None, "accession_number"),
    Index(None, "study_instance_uid"),
    Index(None, "updated_at"),
)

report_versions = Table(
    "report_versions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("report_pk", Id, ForeignKey("reports.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("result_status", String(1), nullable=False),
    Column("reported_status", String(32), nullable=False, default=""),
    Column("interpreter", String(324), nullable=False, default=""),
    Column("interpreter_id", String(64), nullable=False, default=""),
    Column("observation_datetime", String(26), nullable=False, default=""),
    Column("status_datetime", String(26), nullable=False, default=""),
    Column("conclusion", Text, nullable=False, default=""),
    Column("text", Text, nullable=False, default=""),
    # The version's documents (OBX of value type ED: a PDF ...), a JSON list of {media_type, media_subtype,
    # encoding, data} as received; "" without any.
    Column("attachments", Text, nullable=False, default=""),
    Column("content_hash", String(64), nullable=False),
    Column("message_id", Id, nullable=True),
    Column("issued", UTCDateTime(), nullable=False),
    UniqueConstraint("report_pk", "version"),
)
