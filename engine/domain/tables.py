"""Domain tables: patients, orders, scheduled procedure steps, MPPS, studies, accession sequences.

One ``orders`` row is one requested procedure (one ORC/OBR or IPC group); one
``procedure_steps`` row is one Scheduled Procedure Step, the unit a Modality
Worklist C-FIND answers with (PS3.4 K.6.1.2). The step carries every
attribute the matcher filters on, in DICOM value formats, so matching runs in
SQL over indexed columns. Scheduled Station AE Title is multi-valued (VM 1-n):
each value is a row of ``step_station_aes`` so ``CT1\\CT2`` matches a query
for ``CT1`` through an index (PS3.4 C.2.2.2.1, multiple values). Each row repeats its
step's ``start_datetime`` so "this station, this day" is one range of one index.

``studies`` and ``series`` index what was performed, keyed by Study / Series
Instance UID: MPPS fills them today (performed series), C-STORE adds to them.
A study belongs to a patient (moved by A40 like orders and MPPS) and, when its
UID or accession number is an order's, to that order.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from engine.store.schema import Id, UTCDateTime, metadata

__all__ = [
    "accession_sequences",
    "mpps",
    "mpps_series",
    "mpps_steps",
    "orders",
    "patient_merges",
    "patient_other_ids",
    "patients",
    "procedure_steps",
    "series",
    "step_station_aes",
    "studies",
]

patients = Table(
    "patients",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False),
    Column("issuer", String(64), nullable=False, default=""),
    Column("patient_name", String(324), nullable=False, default=""),
    Column("birth_date", String(8), nullable=False, default=""),
    Column("sex", String(16), nullable=False, default=""),
    Column("admission_id", String(64), nullable=False, default=""),
    Column("referring_physician_name", String(324), nullable=False, default=""),
    # Demographics the PAS deleted (sent as HL7 null "", engine.mapping.null) and not given since, space-
    # separated: the images' values are blanked too (engine.domain.reconcile), not left as the modality's.
    # A server default only: rows written by code that predates the column (a migration's data) get "".
    Column("cleared", String(255), nullable=False, server_default=""),
    # Visit (PV1), kept by engine.domain.visits: PV1-2, PV1-3, PV1-6 and (0038,0008) terms.
    Column("patient_class", String(16), nullable=False, default=""),
    Column("current_patient_location", String(64), nullable=False, default=""),
    Column("prior_patient_location", String(64), nullable=False, default=""),
    Column("visit_status", String(16), nullable=False, default=""),
    Column("status", String(16), nullable=False, default="ACTIVE"),  # ACTIVE, MERGED, CANCELED
    Column("merged_into_id", Id, ForeignKey("patients.id"), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("patient_id", "issuer"),
    Index(None, "patient_name"),
)

patient_other_ids = Table(
    "patient_other_ids",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("patient_pk", Id, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("issuer", String(64), nullable=False, default=""),
    Column("type_of_id", String(16), nullable=False, default=""),
    UniqueConstraint("patient_pk", "patient_id", "issuer"),
    Index(None, "patient_id"),
)

patient_merges = Table(
    "patient_merges",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # merge, change_id
    Column("prior_pk", Id, ForeignKey("patients.id"), nullable=False),
    Column("survivor_pk", Id, ForeignKey("patients.id"), nullable=False),
    Column("prior_patient_id", String(64), nullable=False),
    Column("prior_issuer", String(64), nullable=False, default=""),
    Column("message_id", Id, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Index(None, "prior_pk"),
    Index(None, "survivor_pk"),
    Index(None, "prior_patient_id", "prior_issuer"),  # HL7/DICOM for a merged or A47-replaced id
)

orders = Table(
    "orders",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("patient_pk", Id, ForeignKey("patients.id"), nullable=False),
    Column("order_key", String(512), nullable=False),  # see engine.domain.orders.order_key
    Column("placer_order_number", String(64), nullable=False, default=""),
    Column("placer_order_namespace", String(64), nullable=False, default="", server_default=""),
    Column("filler_order_number", String(64), nullable=False, default=""),
    Column("filler_order_namespace", String(64), nullable=False, default="", server_default=""),
    Column("accession_number", String(16), nullable=False, default=""),
    Column("issuer_of_accession_number", String(64), nullable=False, default=""),
    # SH in DICOM (16), kept whole up to 64 (engine.domain.lengths): it is how MPPS and images find the step.
    Column("requested_procedure_id", String(64), nullable=False, default=""),
    Column("study_instance_uid", String(64), nullable=False, default=""),
    Column("priority", String(16), nullable=False, default=""),
    Column("requested_procedure_description", String(64), nullable=False, default=""),
    Column("procedure_code_value", String(64), nullable=False, default=""),
    Column("procedure_coding_scheme", String(64), nullable=False, default=""),
    Column("procedure_code_meaning", String(64), nullable=False, default=""),
    Column("requesting_physician", String(324), nullable=False, default=""),
    Column("referring_physician_name", String(324), nullable=False, default=""),
    Column("admission_id", String(64), nullable=False, default=""),
    Column("order_control", String(2), nullable=False, default=""),
    Column("order_status", String(2), nullable=False, default=""),
    Column("content_hash", String(64), nullable=False, default=""),
    # Fields a message deleted with the HL7 null "" (engine.domain.orders._CLEARABLE), space-separated;
    # a server default only, as patients.cleared.
    Column("cleared", String(255), nullable=False, server_default=""),
    Column("message_id", Id, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index(None, "patient_pk"),
    # Follow-ups find their order by its HL7 identity (engine.domain.order_identity).
    Index(None, "placer_order_number"),
    Index(None, "filler_order_number"),
    Index(None, "accession_number"),
    Index(None, "study_instance_uid"),
    Index(None, "requested_procedure_id"),
)

procedure_steps = Table(
    "procedure_steps",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("order_pk", Id, ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
    Column("sps_id", String(64), nullable=False, default=""),  # SH, kept whole up to 64 as the RP ID
    Column("status", String(16), nullable=False),  # (0040,0020) plus EXPIRED (housekeeping)
    Column("modality", String(16), nullable=False, default=""),
    Column("scheduled_station_ae_title", Text, nullable=False, default=""),  # "A\B"
    Column("scheduled_station_name", String(64), nullable=False, default=""),  # SH, kept whole up to 64
    Column("location", String(64), nullable=False, default=""),  # SH, kept whole up to 64
    Column("start_date", String(8), nullable=False, default=""),  # DA
    Column("start_time", String(6), nullable=False, default=""),  # TM, HHMMSS
    Column("start_datetime", String(14), nullable=False, default=""),  # date + time, for ranges
    Column("description", String(64), nullable=False, default=""),
    Column("protocol_code_value", String(64), nullable=False, default=""),
    Column("protocol_coding_scheme", String(64), nullable=False, default=""),
    Column("protocol_code_meaning", String(64), nullable=False, default=""),
    Column("performing_physician_name", String(324), nullable=False, default=""),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index(None, "order_pk"),
    Index(None, "status", "start_datetime"),
    Index(None, "start_datetime"),
    Index(None, "modality", "start_datetime"),
)

step_station_aes = Table(
    "step_station_aes",
    metadata,
    Column("step_pk", Id, ForeignKey("procedure_steps.id", ondelete="CASCADE"), primary_key=True),
    Column("ae_title", String(64), primary_key=True),  # AE (16), kept whole up to 64 as IPC-9 gave it
    Column("start_datetime", String(14), nullable=False, default=""),  # copy of the step's
    # One index serves "this station (+ this day)" and covers the step_pk it yields.
    Index(None, "ae_title", "start_datetime", "step_pk"),
    # On SQLite the rows live in the primary key's B-tree: one B-tree less to write per step.
    sqlite_with_rowid=False,
)

mpps = Table(
    "mpps",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),  # IN PROGRESS, COMPLETED, DISCONTINUED
    Column("patient_pk", Id, ForeignKey("patients.id"), nullable=True),
    Column("modality", String(16), nullable=False, default=""),
    Column("performed_station_ae_title", String(16), nullable=False, default=""),
    Column("calling_ae_title", String(16), nullable=False, default=""),
    Column("attributes", LargeBinary, nullable=False),  # the dataset as last set (explicit VR LE)
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index(None, "patient_pk"),
)

mpps_steps = Table(
    "mpps_steps",
    metadata,
    Column("mpps_pk", Id, ForeignKey("mpps.id", ondelete="CASCADE"), primary_key=True),
    Column("step_pk", Id, ForeignKey("procedure_steps.id", ondelete="CASCADE"), primary_key=True),
    Index(None, "step_pk"),
)

mpps_series = Table(
    "mpps_series",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("mpps_pk", Id, ForeignKey("mpps.id", ondelete="CASCADE"), nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("series_description", String(64), nullable=False, default=""),
    Column("retrieve_ae_title", String(16), nullable=False, default=""),
    Column("instance_count", Integer, nullable=False, default=0),
    Column("sop_instance_uids", Text, nullable=False, default=""),  # "\\"-joined
    UniqueConstraint("mpps_pk", "series_instance_uid"),
    Index(None, "series_instance_uid"),
)

studies = Table(
    "studies",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("patient_pk", Id, ForeignKey("patients.id"), nullable=True),
    Column("order_pk", Id, ForeignKey("orders.id", ondelete="SET NULL"), nullable=True),
    Column("accession_number", String(16), nullable=False, default=""),
    Column("modalities_in_study", String(128), nullable=False, default=""),  # "CT\\SR", sorted
    Column("number_of_series", Integer, nullable=False, default=0),
    Column("number_of_instances", Integer, nullable=False, default=0),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    # As the first stored instance had them (C-STORE); reconciliation comes later.
    Column("patient_id", String(64), nullable=False, default="", server_default=""),
    Column("issuer_of_patient_id", String(64), nullable=False, default="", server_default=""),
    Column("patient_name", String(324), nullable=False, default="", server_default=""),
    Column("study_date", String(8), nullable=False, default="", server_default=""),
    Column("study_time", String(16), nullable=False, default="", server_default=""),
    Column("study_description", String(64), nullable=False, default="", server_default=""),
    Column("study_id", String(16), nullable=False, default="", server_default=""),
    # reconciliation (#13): the scheduled step the study was matched to (with order_pk)
    Column("step_pk", Id, ForeignKey("procedure_steps.id", ondelete="SET NULL"), nullable=True),
    Index(None, "patient_pk"),
    Index(None, "order_pk"),
    Index(None, "accession_number"),
)

series = Table(
    "series",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("study_pk", Id, ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    Column("series_instance_uid", String(64), nullable=False, unique=True),
    Column("modality", String(16), nullable=False, default=""),
    Column("series_description", String(64), nullable=False, default=""),
    Column("number_of_instances", Integer, nullable=False, default=0),
    Column("mpps_pk", Id, ForeignKey("mpps.id", ondelete="SET NULL"), nullable=True),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("series_number", Integer, nullable=True),
    Column("series_date", String(8), nullable=False, default="", server_default=""),
    # the Study Instance UID its first image arrived with, when a coercion filed it under another ("": none)
    Column("received_study_instance_uid", String(64), nullable=False, default="", server_default=""),
    Index(None, "study_pk"),
    Index(None, "mpps_pk"),
)

accession_sequences = Table(
    "accession_sequences",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("next_value", BigInteger, nullable=False),
)
