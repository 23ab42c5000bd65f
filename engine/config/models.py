"""Typed configuration: ``config/engine.yaml`` and one ``config/channels/*.yaml`` per channel.

Every model forbids unknown keys, so a misspelt setting is an error at load
instead of a silent default. ``docs/channel.schema.json`` is generated from
:class:`ChannelConfig` (``radbridge schema channel``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = [
    "AcceptConfig",
    "ArchiveS3Config",
    "AuthConfig",
    "ChannelConfig",
    "DatabaseConfig",
    "DestinationConfig",
    "DicomConfig",
    "DicomDestinationConfig",
    "DuplicatesConfig",
    "EngineConfig",
    "FhirAuthConfig",
    "FhirBearerAuthConfig",
    "FhirClientCredentialsConfig",
    "FhirConfig",
    "FhirDestinationConfig",
    "FhirHistoryConfig",
    "FhirNoAuthConfig",
    "FieldCondition",
    "FilterConfig",
    "HTTPDestinationConfig",
    "ImageRouteRule",
    "MLLPDestinationConfig",
    "MLLPSourceConfig",
    "MessagesConfig",
    "MppsConfig",
    "OrdersConfig",
    "PatientsConfig",
    "ReportReceiver",
    "ReportsConfig",
    "RetryConfig",
    "StationRule",
    "TLSConfig",
    "WorklistConfig",
    "split_address",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_FIELD_PATH = re.compile(r"^[A-Z][A-Z0-9]{2}(\(\d+\))?-\d+(\(\d+\))?(\.\d+){0,2}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSConfig(_Model):
    """TLS for a listener (server side) or a destination (client side)."""

    cert_file: Path | None = Field(None, description="PEM certificate chain presented to the peer")
    key_file: Path | None = Field(None, description="PEM private key for cert_file")
    ca_file: Path | None = Field(None, description="PEM CA bundle used to verify the peer")
    require_client_cert: bool = Field(False, description="listeners: mutual TLS")
    verify_peer: bool = Field(True, description="destinations: verify the server certificate")
    server_hostname: str | None = Field(None, description="destinations: name to verify")

    @model_validator(mode="after")
    def _key_with_cert(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MLLPSourceConfig(_Model):
    """An MLLP listener."""

    type: Literal["mllp"] = "mllp"
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    idle_timeout_seconds: float = Field(600.0, gt=0)
    max_connections: int = Field(
        256, ge=1, description="open connections; a new one takes the place of the longest-idle connection"
    )
    charset_fallback: str = Field("8859/1", description="HL7 table 0211 name used when MSH-18 fails")
    detect_utf8: bool = Field(True, description="read valid UTF-8 as UTF-8 despite a single-byte MSH-18")
    tls: TLSConfig | None = None
    # Limits against idle, slow and hostile peers (docs/configuration.md, "MLLP listener limits").
    max_connections_per_peer: int = Field(
        64, ge=1, description="connections from one IP address (capped by max_connections); behind NAT or a "
        "load balancer raise it to max_connections"
    )
    first_byte_timeout_seconds: float = Field(
        30.0, gt=0, description="a connection that sends nothing for this long is closed (TLS: also the handshake)"
    )
    frame_timeout_seconds: float = Field(
        120.0, gt=0, description="a frame still unfinished this long after its first byte is abandoned and kept"
    )
    max_buffered_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="bytes of unfinished and unanswered frames all connections may hold; "
        "over it, connections holding a large unfinished frame stop being read"
    )
    max_kept_bytes: int = Field(
        1024 * 1024, ge=1024, description="bytes stored of an oversize or unfinished frame, or of junk"
    )
    backlog: int = Field(1024, ge=1, description="listen queue length (capped by net.core.somaxconn)")

    @model_validator(mode="after")
    def _limits_fit(self) -> MLLPSourceConfig:
        if self.max_buffered_bytes < self.max_message_bytes:
            raise ValueError("max_buffered_bytes must be at least max_message_bytes")
        return self


class AcceptConfig(_Model):
    """What the channel accepts; everything else is answered AR."""

    message_types: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    processing_ids: list[str] = Field(default_factory=lambda: ["P", "T", "D"], min_length=1)
    versions: list[str] = Field(default_factory=lambda: ["2.*"], min_length=1)
    structure: Literal["none", "control", "strict"] = "control"
    datatypes: Literal["none", "key", "all"] = "key"
    timestamps: Literal["lenient", "strict"] = Field(
        "lenient",
        description="lenient: read date/times outside the HL7 grammar that can be read one way only (noted"
        " with the message) and ignore unreadable ones in MSH-7, EVN-2, ORC-9; strict: AE 102 for any",
    )


class FieldCondition(_Model):
    """A condition on one field value (``PID-3.4``, ``OBR(1)-24``)."""

    field: str
    equals: str | None = None
    in_: list[str] | None = Field(None, alias="in")
    matches: str | None = None
    present: bool | None = None
    negate: bool = False

    @field_validator("field")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _FIELD_PATH.match(value):
            raise ValueError(f"{value!r} is not a field path like PID-3.4 or OBR(2)-24")
        return value

    @field_validator("matches")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value

    @model_validator(mode="after")
    def _one_test(self) -> FieldCondition:
        tests = [self.equals, self.in_, self.matches, self.present]
        if sum(t is not None for t in tests) != 1:
            raise ValueError("give exactly one of equals, in, matches, present")
        return self


class FilterConfig(_Model):
    """Which accepted messages the channel processes; the others are FILTERED."""

    message_types: list[str] | None = None
    sending_applications: list[str] | None = None
    sending_facilities: list[str] | None = None
    conditions: list[FieldCondition] = Field(default_factory=list)
    mode: Literal["all", "any"] = Field("all", description="how conditions combine")
    action: Literal["accept", "reject"] = Field(
        "accept", description="accept: filtered messages get AA; reject: they get AR"
    )


class DuplicatesConfig(_Model):
    """Resent messages: same sender and control id."""

    window_hours: float = Field(72.0, ge=0)
    on_conflict: Literal["reject", "accept"] = Field(
        "reject", description="same control id, different body: AE 205, or process as new"
    )


class RetryConfig(_Model):
    """Exponential backoff for one destination."""

    initial_seconds: float = Field(1.0, gt=0)
    multiplier: float = Field(2.0, ge=1)
    max_seconds: float = Field(300.0, gt=0)
    max_attempts: int = Field(50, ge=1, description="after this many failed attempts: ERROR")


class _DestinationBase(_Model):
    name: str = Field(pattern=_NAME)
    message_types: list[str] = Field(default_factory=lambda: ["*"])
    ordering_key: Literal["patient_id", "accession_number", "control_id", "none"] = "patient_id"
    retry: RetryConfig = Field(default_factory=RetryConfig)
    timeout_seconds: float = Field(30.0, gt=0)


class MLLPDestinationConfig(_DestinationBase):
    """Forward over MLLP and check the peer's ACK."""

    type: Literal["mllp"]
    host: str
    port: int = Field(ge=1, le=65535)
    tls: TLSConfig | None = None


class HTTPDestinationConfig(_DestinationBase):
    """POST the message to a URL (httpx)."""

    type: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    tls: TLSConfig | None = None


DestinationConfig = Annotated[
    MLLPDestinationConfig | HTTPDestinationConfig, Field(discriminator="type")
]


# --- DICOM C-STORE destination (forwarding stored images, docs/images.md "Forwarding") ---


class ImageRouteRule(_Model):
    """Which stored images a DICOM destination takes: every listed criterion must match (empty: any)."""

    modalities: list[str] = Field(default_factory=list, description="Modality (0008,0060) of the series")
    calling_ae_titles: list[str] = Field(default_factory=list, description="AE title of the sender (the source)")
    sop_classes: list[str] = Field(default_factory=list, description="SOP Class UIDs")


class DicomDestinationConfig(_Model):
    """Forward stored images with C-STORE (pynetdicom SCU); the outbox row names the instance.

    Only in ``engine.yaml``'s ``destinations``: every image stored by the DICOM listener that
    matches ``routes`` is queued for it, in the transaction that indexes the image.
    """

    type: Literal["dicom"]
    name: str = Field(pattern=_NAME)
    host: str = Field(description="peer address; empty: the destination is off (said at start), nothing is queued")
    port: int = Field(104, ge=1, le=65535)
    called_ae_title: str = Field(min_length=1, max_length=16, description="the peer's AE title")
    calling_ae_title: str = Field("", max_length=16, description="ours; empty: dicom.ae_title")
    routes: list[ImageRouteRule] = Field(
        default_factory=list, description="empty: every stored image; else the images matching any rule"
    )
    ordering_key: Literal["study_instance_uid", "none"] = Field(
        "study_instance_uid", description="instances of one study leave in the order they were stored"
    )
    retry: RetryConfig = Field(default_factory=RetryConfig)
    timeout_seconds: float = Field(
        60.0, gt=0, description="one C-STORE, association set-up included (raise it for very large instances)"
    )
    connect_timeout_seconds: float = Field(10.0, gt=0, description="TCP connect and A-ASSOCIATE answer")
    idle_seconds: float = Field(30.0, ge=0, description="an unused association stays open this long for the next")
    max_associations: int = Field(2, ge=1, le=64, description="open associations to this peer at most")
    uncompressed_conversion: bool = Field(
        True, description="an uncompressed instance whose transfer syntax the peer refuses is sent in an"
        " uncompressed one it accepts; compressed instances are never decoded",
    )
    tls: TLSConfig | None = None
    on_correction: Literal["resend", "hl7", "none"] = Field(
        "resend", description="after a stored image is corrected (ADT A08/A31/A40/A47, order update, late order):"
        " resend the corrected copy; hl7: send an ADT (A08, or A40 when the patient id changed) to"
        " correction_hl7_destination instead; none: nothing"
    )
    correction_hl7_destination: str = Field(
        "", description="on_correction hl7: the mllp (or http) destination in engine.yaml that gets the ADT"
    )

    @field_validator("called_ae_title", "calling_ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if value != value.strip() or "\\" in value or any(ord(ch) < 32 for ch in value):
            raise ValueError("an AE title has no leading/trailing spaces, backslash or control characters")
        return value



# --- FHIR push destination (docs/fhir.md "Push to the EHR's FHIR server") ---


class FhirNoAuthConfig(_Model):
    """No Authorization header (a server on a trusted network, tests)."""

    type: Literal["none"] = "none"


class FhirBearerAuthConfig(_Model):
    """A static bearer token, read from an environment variable at start."""

    type: Literal["bearer"]
    token_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="environment variable holding the token")


class FhirClientCredentialsConfig(_Model):
    """OAuth 2.0 client credentials grant (RFC 6749 4.4): the token is cached until it expires, renewed on 401."""

    type: Literal["client_credentials"]
    token_url: str = Field(pattern=r"^https?://\S+$", description="the EHR's token endpoint")
    client_id: str = Field(min_length=1)
    client_secret_env: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="environment variable holding the client secret"
    )
    scope: str = Field("", description="space-separated scopes to ask for (e.g. system/ImagingStudy.write)")
    method: Literal["client_secret_basic", "client_secret_post"] = Field(
        "client_secret_basic", description="how the secret is sent to the token endpoint (RFC 6749 2.3.1)"
    )


FhirAuthConfig = Annotated[
    FhirNoAuthConfig | FhirBearerAuthConfig | FhirClientCredentialsConfig, Field(discriminator="type")
]


#: Resource types a FHIR destination can upsert (each has a conditional-update rule, channels/fhir/push/rules.py).
PushableType = Literal["ImagingStudy", "DiagnosticReport", "Patient", "ServiceRequest"]


class FhirDestinationConfig(_Model):
    """Push stored FHIR resources to a remote FHIR R4 server by conditional update.

    Only in ``engine.yaml``'s ``destinations``: each new version the projector stores of a
    resource of ``resource_types`` is queued for it, in the transaction that stores it.
    """

    type: Literal["fhir"]
    name: str = Field(pattern=_NAME)
    base_url: str = Field(
        pattern=r"^(https?://\S+)?$",
        description="the server's FHIR base; empty: the destination is off, nothing is queued",
    )
    resource_types: list[PushableType] = Field(
        default_factory=lambda: list[PushableType](["ImagingStudy", "DiagnosticReport"]), min_length=1,
        description="which resource types are pushed when they change",
    )
    references: Literal["push", "identifier"] = Field(
        "push", description="push: a referenced Patient/ServiceRequest is upserted first and the reference"
        " points at the server's id; identifier: references become logical (Reference.identifier only)",
    )
    ordering_key: Literal["patient", "resource", "none"] = Field(
        "patient", description="deliveries of one patient (or one resource) leave in the order stored"
    )
    auth: FhirAuthConfig = Field(default_factory=FhirNoAuthConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    timeout_seconds: float = Field(30.0, gt=0, description="one delivery, referenced resources and token included")
    tls: TLSConfig | None = None


# --- end FHIR push destination ---


EngineDestinationConfig = Annotated[
    MLLPDestinationConfig | HTTPDestinationConfig | DicomDestinationConfig | FhirDestinationConfig,
    Field(discriminator="type"),
]

# --- end DICOM C-STORE destination ---


class ChannelConfig(_Model):
    """One channel: source → accept → filter → mapping → handlers → destinations."""

    name: str = Field(pattern=_NAME)
    enabled: bool = True
    description: str = ""
    source: MLLPSourceConfig
    accept: AcceptConfig = Field(default_factory=AcceptConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    duplicates: DuplicatesConfig = Field(default_factory=DuplicatesConfig)
    mapping: str | list[str] | None = Field(
        None, description="mapping name(s) under mappings/; the first whose accept list matches the message applies"
    )

    @property
    def mapping_names(self) -> list[str]:
        """The configured mapping names as a list."""
        if self.mapping is None:
            return []
        return [self.mapping] if isinstance(self.mapping, str) else list(self.mapping)
    handlers: list[str] = Field(default_factory=list, description="domain handlers, in order")
    destinations: list[DestinationConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_destinations(self) -> ChannelConfig:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique: {', '.join(dupes)}")
        return self


class DatabaseConfig(_Model):
    """Where messages and the domain live."""

    url: str = Field("", description="SQLAlchemy URL; empty: SQLite file in data_dir")
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    sqlite_page_size: Literal[512, 1024, 2048, 4096, 8192, 16384, 32768, 65536] = Field(
        1024, description="page size of a new SQLite database (an existing one keeps its own)"
    )
    pool_size: int = Field(5, ge=1)
    answer_timeout_seconds: float = Field(
        60.0, gt=0, le=3600, description="PostgreSQL: longest wait for the server's answer to one request (a "
        "statement, a fetch, a commit); past it the connection is closed and the work fails (AE, 0xA700, retried) "
        "instead of waiting for ever on a server that accepts but does not answer. Migrations are not bounded"
    )


class DicomConfig(_Model):
    """The DICOM listener (Modality Worklist C-FIND, MPPS N-CREATE/N-SET, C-ECHO)."""

    enabled: bool = True
    ae_title: str = Field("RADBRIDGE", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    accepted_calling_ae_titles: list[str] = Field(default_factory=list, description="empty: any")
    tls: TLSConfig | None = None
    max_associations: int = Field(
        50, ge=1, description="associations (and connections still negotiating) served at once; 50 lets ten hosts"
        " each hold max_associations_per_host and still leaves room"
    )
    max_associations_per_host: int = Field(
        5, ge=1, description="open connections one calling host may hold; behind a load balancer or NAT raise it"
    )
    artim_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="ARTIM (PS3.8 9.1.5): time to complete an A-ASSOCIATE-RQ or to close"
    )
    idle_timeout_seconds: float = Field(
        60.0, gt=0, description="an association without a PDU for this long is aborted (its slot given back);"
        " a PDU stalled this long ends it"
    )
    receive_processes: int = Field(
        2, ge=0, le=32, description="worker processes that run the associations (C-STORE receive, C-ECHO,"
        " C-FIND, MPPS) while this process keeps the listening socket and the limits; 0: all in this process"
    )
    max_instance_bytes: int = Field(
        4 << 30, ge=1 << 20, description="the largest C-STORE data set received; a longer one is aborted"
        " (A-ABORT) and its spool removed. 4 GiB: a 1 GB multiframe instance fits four times"
    )
    max_spool_bytes_per_host: int = Field(
        8 << 30, ge=1 << 20, description="spool bytes one calling host may have in flight (data sets being"
        " received) across all its associations and the receive workers; past it its store is answered 0xA700."
        " At least max_instance_bytes"
    )

    @model_validator(mode="after")
    def _spool_bounds_fit(self) -> DicomConfig:
        if self.max_spool_bytes_per_host < self.max_instance_bytes:
            raise ValueError(f"max_spool_bytes_per_host ({self.max_spool_bytes_per_host}) must be at least"
                             f" max_instance_bytes ({self.max_instance_bytes}): no instance that large could arrive")
        return self


class ArchiveS3Config(_Model):
    """How to reach an S3-compatible object store named by an ``s3://`` location (credentials: environment)."""

    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:8333; empty: AWS or $AWS_ENDPOINT_URL")
    region: str | None = Field(None, description="empty: $AWS_DEFAULT_REGION or the SDK's default")

    @field_validator("endpoint_url", "region", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class ArchiveConfig(_Model):
    """Images received by C-STORE: where their files go and what a resend with new content does."""

    enabled: bool = Field(True, description="accept C-STORE (every storage SOP class) on the DICOM AE")
    primary: Path | None = Field(None, description="primary storage location; empty: <data_dir>/archive")
    quarantine: Path | None = Field(
        None, description="refused datasets kept for inspection; empty: <primary>/.quarantine"
    )
    duplicate_policy: Literal["replace", "reject"] = Field(
        "replace",
        description="same SOP Instance UID, different content: index the new version and keep the old"
        " one as history, or refuse it (0x0111)",
    )

    # --- second location, fixity, tiering (engine.archive.replication, fixity, tiering) ---
    secondary: str | None = Field(
        None, description="second storage location: a directory, or s3://bucket[/prefix] (credentials from"
        " the environment); empty: none"
    )
    primary_s3: str | None = Field(
        None, description="keep the primary copies in this object store, s3://bucket[/prefix] (engines can share"
        " it); archive.primary then holds only the spool and the quarantine; empty: in archive.primary"
    )
    s3: ArchiveS3Config = Field(default_factory=lambda: ArchiveS3Config())
    replication_retry: RetryConfig = Field(
        default_factory=lambda: RetryConfig(initial_seconds=2.0, max_seconds=300.0, max_attempts=1_000_000),
        description="copies to the secondary are retried until it is back (never dead-lettered in practice)",
    )
    replication_timeout_seconds: float = Field(
        60.0, gt=0, description="one copy (read, write, read back); at most outbox.lease_seconds - 11"
    )
    verify_interval_seconds: float = Field(3600.0, gt=0, description="how often the fixity job runs")
    verify_sample: int = Field(
        100, ge=0, description="instances the fixity job re-reads per run, least recently checked first; 0: off"
    )
    tier_after_days: float | None = Field(
        None, gt=0, description="remove the primary copy of instances received this long ago once their"
        " secondary copy is verified; empty: never"
    )
    tier_interval_seconds: float = Field(3600.0, gt=0, description="how often the tiering job runs")
    min_free_bytes: int = Field(
        1 << 30, ge=0, description="free space kept on the spool's (archive.primary's) file system: below it a new"
        " C-STORE is answered 0xA700 before it writes, and one being received is refused at its next 64 MiB;"
        " 0: off"
    )

    @field_validator("primary", "quarantine", "secondary", "primary_s3", "tier_after_days", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("secondary", "primary_s3")
    @classmethod
    def _known_kind(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if "://" not in value:
            if info.field_name == "primary_s3":
                raise ValueError("not an object store: s3://bucket[/prefix] (a directory goes in archive.primary)")
            return value
        scheme, rest = value.split("://", 1)
        if scheme != "s3":
            raise ValueError(f"unknown storage location kind {scheme!r}: a directory or s3://bucket[/prefix]")
        if not rest.split("/", 1)[0]:
            raise ValueError("s3:// location without a bucket: s3://bucket[/prefix]")
        return value


class ReconcileConfig(_Model):
    """Reconciliation of stored images with their order (docs/images.md "Reconciliation")."""

    enabled: bool = Field(True, description="match each stored image to its order and coerce its header")
    mapping: str = Field("order-to-image", description="the mapping file (in mappings_dir) giving the coerced values")
    completed_window_hours: float = Field(
        24.0, ge=0, description="a COMPLETED step is still a candidate this long after it completed"
    )
    patient_id_mismatch: Literal["reject", "accept"] = Field(
        "reject",
        description="an image whose Patient ID is not its stored study's patient's (nor merged into it):"
        " refuse it (0xC230) or store it",
    )
    modifying_system: str = Field(
        "", max_length=64, description="ModifyingSystem in OriginalAttributesSequence; empty: the DICOM AE title"
    )
    poll_interval_seconds: float = Field(
        5.0, gt=0, description="how often the background job looks for orders that match unscheduled studies"
    )
    correction_batch: int = Field(
        10, ge=1, description="stored instances the background job rewrites and indexes per transaction"
    )
    correction_yield_ratio: float = Field(
        3.0, ge=0, description="after each batch the job pauses this many times the batch's duration (receivers first)"
    )


class FhirHistoryConfig(_Model):
    """How many earlier versions of resources whose history is not kept in full are kept (docs/fhir.md).

    DiagnosticReport versions (the report's versions) are always all kept.
    """

    keep_versions: int = Field(1, ge=1, description="versions kept per ImagingStudy, Patient, ServiceRequest and "
                               "Endpoint, the current one included (1: only the current version)")
    keep_days: float = Field(0.0, ge=0, description="earlier versions younger than this are kept as well")
    interval_seconds: float = Field(3600.0, gt=0, description="how often the fhir-history-retention job runs")


class FhirConfig(_Model):
    """What the FHIR resources say beyond the domain data (docs/fhir.md)."""

    dicomweb_base: str | None = Field(
        None, pattern=r"^https?://\S+$",
        description="DICOMweb (WADO-RS) base URL: served as Endpoint/dicomweb and ImagingStudy.endpoint")
    identifier_systems: dict[str, str] = Field(
        default_factory=dict, description="HL7/DICOM assigning authority or namespace -> FHIR identifier system URI")
    accession_system: str = Field("urn:radbridge:accession", description="identifier system of accession numbers "
                                  "without an issuer")
    patient_id_system: str = Field("urn:radbridge:patient-id", description="identifier system of patient ids "
                                   "without an issuer")
    history: FhirHistoryConfig = Field(default_factory=FhirHistoryConfig)
    imaging_study_settle_seconds: float = Field(
        1.0, ge=0, description="a study still receiving images is stored as an ImagingStudy again once no image"
        " has come for this long (0: at every projector cycle, about every 0.5 s)")
    imaging_study_max_delay_seconds: float = Field(
        10.0, gt=0, description="while images keep coming, its ImagingStudy is stored again at least this often")


class HTTPConfig(_Model):
    """The HTTP API (FHIR facade)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    enabled: bool = Field(False, description="serve the FHIR API on host:port (the shipped engine.yaml turns it on)")
    auth: Literal["smart", "development-no-auth"] = Field(
        "smart", description="smart: OAuth2 bearer tokens (engine.auth); development-no-auth: anybody may read "
        "everything, for development and tests only")
    tls: TLSConfig | None = None
    max_connections: int = Field(256, ge=1, description="open connections and requests; beyond it 503")
    keep_alive_seconds: float = Field(5.0, gt=0, description="idle keep-alive connections are closed after this")
    # Limits against slow and hostile peers (channels/fhir/request_head.py).
    max_request_head_bytes: int = Field(
        65536, ge=1024, description="request line and headers; a head that grows past it is answered 431 and closed"
        " (counted from the read after the one it began in: it may exceed the limit by one read, 256 KiB)")
    request_head_timeout_seconds: float = Field(
        10.0, gt=0, description="a request line and headers not complete this long after the connection or their "
        "first byte are answered 408 and closed")
    max_connections_per_peer: int = Field(
        64, ge=1, description="connections from one IP address; more are answered 503 and closed (behind a proxy "
        "raise it to max_connections)")
    request_body_timeout_seconds: float = Field(
        30.0, gt=0, description="a request body not complete this long after its headers is answered 408 and "
        "closed (unless the answer has begun)")
    public_base_url: str | None = Field(
        None, pattern=r"^https?://\S+$", description="base URL in links (fullUrl, next); default: from the request")
    fhir: FhirConfig = Field(default_factory=FhirConfig)


class AuthConfig(_Model):
    """Authorization of the HTTP API: SMART Backend Services token endpoint (docs/fhir-auth.md)."""

    token_url: str | None = Field(
        None, pattern=r"^https?://[^\s/?#]+/[^\s?#]*$",
        description="the token endpoint's absolute URL as clients reach it (the aud of their assertions);"
        " empty: taken from each request's Host header, which is only right without a proxy in front",
    )
    token_lifetime_seconds: int = Field(300, ge=1, le=3600, description="how long an access token is valid")
    max_assertion_lifetime_seconds: int = Field(
        300, ge=1, le=300, description="a client assertion's exp may be at most this far ahead (SMART: 5 minutes)"
    )
    clock_skew_seconds: int = Field(30, ge=0, le=300, description="tolerated clock difference in every time check")
    failure_window_seconds: float = Field(60.0, gt=0, description="failed token requests are counted per window")
    max_failures_per_client_ip: int = Field(
        10, ge=1, description="failed token requests for one client id from one IP address per window"
    )
    max_failures_per_ip: int = Field(50, ge=1, description="failed token requests from one IP address per window")
    unauthenticated_development_mode: bool = Field(
        False, description="DEVELOPMENT ONLY: requests without a token are served as client 'development' with"
        " scope system/*.rs (a WARNING at start); never on a system holding real patient data",
    )

    @field_validator("token_url", mode="before")
    @classmethod
    def _empty_is_request(cls, value: Any) -> Any:
        return None if value == "" else value


#: A send starts only if it can end, its timeout included, this long before its lease does:
#: recording the outcome must happen while the row is still ours, or another engine could
#: lease it and send it again. A lease must leave at least as long again to start sends in.
LEASE_MARGIN_SECONDS = 5.0
#: How long past its own timeout a destination's send may run before the outbox gives up on it.
SEND_BACKSTOP_SECONDS = 1.0


class OutboxConfig(_Model):
    """Delivery workers."""

    poll_interval_seconds: float = Field(1.0, gt=0)
    batch_size: int = Field(100, ge=1)
    lease_seconds: float = Field(
        120.0, gt=0,
        description="how long a worker owns the rows it claimed; at least every destination's"
        " timeout_seconds + 11",
    )


class IdentityConfig(_Model):
    """How radbridge names itself in ACKs (MSH-3/MSH-4 when the sender left MSH-5/6 empty)."""

    application: str = "RADBRIDGE"
    facility: str = ""


class LoggingConfig(_Model):
    """Log output. INFO never carries PHI (names, birth dates): ids only."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


_DEFAULT_HIDDEN = ["STARTED", "DEPARTED", "CANCELED", "DISCONTINUED", "COMPLETED"]
_IMAGING_MODALITIES = [
    "CR", "CT", "DX", "ES", "IO", "MG", "MR", "NM", "OT", "PT", "PX", "RF", "RG", "US", "XA", "XC",
]


class PatientsConfig(_Model):
    """ADT handling: identity and merge policy (reference section 7)."""

    trusted_issuers: list[str] = Field(
        default_factory=list,
        description="assigning authorities whose PID-3 is the identity; empty: the first PID-3",
    )
    merged_id_policy: Literal["reject", "follow"] = Field(
        "reject", description="later HL7 for a merged-away or A47-replaced id: AE 204, or apply to the survivor"
    )


class StationRule(_Model):
    """Scheduled Station AE Title(s) for orders without IPC-9; the first matching rule wins."""

    modality: str | None = None
    procedure_code: str | None = None
    location: str | None = None
    ae_titles: list[str] = Field(min_length=1)
    station_name: str = ""


class OrdersConfig(_Model):
    """Order lifecycle, accession numbers and UIDs (reference sections 2 and 3)."""

    order_control_table: Path | None = Field(
        None, description="ORC-1,ORC-5 -> SPS status CSV; None: mappings/tables/order_control_status.csv"
    )
    accession_policy: Literal["always_generate", "generate_if_missing", "require"] = "generate_if_missing"
    accession_pattern: str = Field(
        "{date:%Y%m%d}{seq:06d}", description="str.format with date (site today) and seq (database)"
    )
    accession_sequence: str = Field("accession", min_length=1, max_length=64)
    uid_root: str = Field("2.25", pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=40)
    station_rules: list[StationRule] = Field(default_factory=list)
    imaging_modalities: list[str] = Field(default_factory=lambda: list(_IMAGING_MODALITIES))
    non_imaging: Literal["ignore", "reject"] = Field(
        "ignore", description="orders positively listed as non-imaging: AA and ignored (noted), or AE 103"
    )
    non_imaging_by_channel: dict[str, Literal["ignore", "reject"]] = Field(default_factory=dict)
    reopen_cancelled: bool = Field(
        False, description="an NW/XO saying scheduled for a CANCELED or DISCONTINUED step schedules it again "
        "(a RIS that reinstates orders by resending them); false: the step stays cancelled and the message says so",
    )
    non_imaging_table: Path | None = Field(
        None, description="field,code CSV of OBR-24 sections and OBR-4 codes that are not imaging; "
        "None: mappings/tables/non_imaging.csv (missing: HL7 table 0074 lab sections)",
    )


class WorklistConfig(_Model):
    """Modality Worklist matching (PS3.4 K) and housekeeping."""

    hidden_statuses: list[str] = Field(default_factory=lambda: list(_DEFAULT_HIDDEN))
    max_matches: int = Field(1000, ge=1, description="more matches: A700 after the first max_matches")
    person_name_case_sensitive: bool = False
    charset: str = Field("ISO_IR 192", description="SpecificCharacterSet of responses")
    expire_after_hours: float = Field(72.0, gt=0, description="scheduled steps older leave the worklist")
    retention_days: float = Field(30.0, gt=0, description="finished steps older are deleted")
    housekeeping_interval_seconds: float = Field(3600.0, gt=0)


class MessagesConfig(_Model):
    """Stored messages."""

    rejected_retention_days: float = Field(
        30.0, gt=0, description="REJECTED messages (and kept junk, oversize, unfinished frames) older are deleted"
    )


class MppsConfig(_Model):
    """MPPS SCP (PS3.4 F) and the status message to the RIS."""

    status_destination: str = Field("", description="outbox destination; empty: no status message")
    status_message: Literal["ORM", "OMI"] = "ORM"
    status_channel: str = "mpps"
    sending_application: str = "RADBRIDGE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    require_type2_attributes: bool = Field(
        False, description="N-CREATE must also carry every Type 2 attribute of PS3.4 Table F.7.2-1 (may be empty)"
    )


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port); ValueError naming what is wrong."""
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not host:port (a port 1-65535)")
    return host, int(port)


class ReportReceiver(_Model):
    """One EHR that gets every report as ORU^R01, built by its own mapping file (docs/reports.md)."""

    name: str = Field(pattern=_NAME, description="outbox destination name of this receiver (status, messages show)")
    mapping: str = Field("report-to-oru", description="mapping file (report -> HL7 v2) under mappings_dir")
    mllp: str = Field(
        "", description="host:port of the EHR's MLLP listener; empty (and no destination): this receiver is off"
    )
    destination: str = Field("", description="instead of mllp: a destination configured in engine.yaml")
    tls: TLSConfig | None = Field(None, description="mllp: TLS toward the EHR")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    timeout_seconds: float = Field(30.0, gt=0, description="mllp: seconds to wait for the EHR's ACK")

    @field_validator("mllp")
    @classmethod
    def _address(cls, value: str) -> str:
        if value.strip():
            split_address(value)
        return value.strip()

    @model_validator(mode="after")
    def _one_target(self) -> ReportReceiver:
        if self.mllp and self.destination:
            raise ValueError("give mllp or destination, not both")
        return self

    @property
    def enabled(self) -> bool:
        """False when neither ``mllp`` nor ``destination`` is set (e.g. RADBRIDGE_EHR_MLLP unset)."""
        return bool(self.mllp or self.destination)

    @property
    def target(self) -> str:
        """The outbox destination its ORU^R01 messages go to."""
        return self.destination or self.name

    def mllp_destination(self) -> MLLPDestinationConfig | None:
        """The MLLP destination ``mllp`` describes (None with ``destination`` or when off)."""
        if not self.mllp:
            return None
        host, port = split_address(self.mllp)
        return MLLPDestinationConfig(type="mllp", name=self.name, host=host, port=port, tls=self.tls,
                                     retry=self.retry, timeout_seconds=self.timeout_seconds, message_types=[])


class ReportsConfig(_Model):
    """Reports in (ORU^R01 from the reporting system) and ORU^R01 out to the EHR(s)."""

    unknown_order: Literal["keep", "reject"] = Field(
        "keep", description="a report whose order is unknown: keep it (attached when the order arrives) or AE 204"
    )
    status_table: Path | None = Field(
        None, description="OBR-25 -> result and FHIR status CSV; None: mappings/tables/report_status.csv"
    )
    receivers: list[ReportReceiver] = Field(default_factory=list, description="EHRs that get ORU^R01")

    @model_validator(mode="after")
    def _unique(self) -> ReportsConfig:
        names = [r.name for r in self.receivers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"receiver names must be unique: {', '.join(dupes)}")
        return self


class EngineConfig(_Model):
    """``config/engine.yaml``."""

    data_dir: Path = Path("./var")
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    dicom: DicomConfig = Field(default_factory=DicomConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)
    http: HTTPConfig = Field(default_factory=HTTPConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    timezone: str = Field("UTC", description="site time zone for HL7 times without an offset")
    mappings_dir: Path = Path("./mappings")
    patients: PatientsConfig = Field(default_factory=PatientsConfig)
    orders: OrdersConfig = Field(default_factory=OrdersConfig)
    worklist: WorklistConfig = Field(default_factory=WorklistConfig)
    mpps: MppsConfig = Field(default_factory=MppsConfig)
    messages: MessagesConfig = Field(default_factory=MessagesConfig)
    destinations: list[EngineDestinationConfig] = Field(
        default_factory=list,
        description="destinations not tied to a channel (MPPS status to the RIS, DICOM forwarding of images)",
    )
    reports: ReportsConfig = Field(default_factory=ReportsConfig)

    @field_validator("timezone")
    @classmethod
    def _iana(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris)") from None
        return value

    def archive_dir(self) -> Path:
        """The primary storage location: ``archive.primary`` or ``<data_dir>/archive``."""
        return self.archive.primary or self.data_dir / "archive"

    def quarantine_dir(self) -> Path:
        """Where refused datasets are kept: ``archive.quarantine`` or ``<primary>/.quarantine``."""
        return self.archive.quarantine or self.archive_dir() / ".quarantine"

    def database_url(self) -> str:
        """The configured URL, or the embedded SQLite file under ``data_dir``."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.data_dir / 'radbridge.db').as_posix()}"
