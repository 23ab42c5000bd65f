"""The one error hierarchy of radbridge.

Every failure the engine knows how to answer is an ``RadbridgeError``; the
protocol boundaries translate it (an HL7 ACK code and ERR segment, a DIMSE
status, an OperationOutcome). Foreign exceptions are chained with ``from exc``
at the boundary where they enter::

    RadbridgeError
    ├── ConfigError                 configuration or mapping file rejected at load
    ├── StoreUnavailable            the database cannot commit; never answer success
    ├── StoreMissing                a command that must not create the store found none
    ├── SchemaMismatch              the database's schema is not at this code's revision
    ├── AlreadyRunning              another engine holds this data directory's pid file
    ├── ArchiveUnavailable          a storage location cannot take a file (full, unwritable)
    │   └── CopyMissing             a copy the index names is not in its location
    ├── MalformedDataset            a received DICOM dataset cannot be parsed
    ├── SearchError                 a FHIR search the server cannot run (engine.fhir.query; 400)
    ├── ApiError                    a FHIR request answered with a status and an OperationOutcome
    │                               (channels.fhir.outcome)
    ├── AuthFailure                 401/403 from an Authorizer (engine.auth)
    ├── DeliveryError               one outbound attempt failed
    │   ├── RetryableDelivery       try again later (timeout, AE/CE, 5xx, refused)
    │   └── PermanentDelivery       never retry (AR/CR, 4xx)
    └── HL7Error                    inbound message answered with an error ACK
        ├── HL7Reject               AR: unsupported type, event, processing id, version
        └── HL7ApplicationError     AE: required field missing, bad data, unknown key …

``HL7Error`` carries the HL7 table 0357 code and the ERR-2 location
(``SEG^sequence^field^component``, HL7 v2.5.1 2.15.5.2).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AlreadyRunning",
    "ArchiveUnavailable",
    "ConfigError",
    "CopyMissing",
    "DeliveryError",
    "ErrorLocation",
    "HL7ApplicationError",
    "HL7Error",
    "HL7Reject",
    "MalformedDataset",
    "PermanentDelivery",
    "RadbridgeError",
    "RetryableDelivery",
    "SchemaMismatch",
    "StoreMissing",
    "StoreUnavailable",
]


class RadbridgeError(Exception):
    """Base of every error radbridge raises on purpose."""


class ConfigError(RadbridgeError):
    """A configuration or mapping file was rejected; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class AlreadyRunning(RadbridgeError):
    """A live ``radbridge run`` holds the data directory; the message names its pid."""


class ArchiveUnavailable(RadbridgeError):
    """A storage location could not take a file (disk full, unwritable); never answer success."""


class CopyMissing(ArchiveUnavailable):
    """A stored copy the index names is not in its storage location (lost, or tiered away)."""


class MalformedDataset(RadbridgeError):
    """A received DICOM dataset cannot be parsed; the message says where it broke."""


class StoreUnavailable(RadbridgeError):
    """The database could not commit; the sender must not get a success answer."""


class StoreMissing(RadbridgeError):
    """The SQLite database (or its directory) does not exist and this command must not create it.

    Only ``radbridge run`` (and registering an API client) creates the store; the message
    names the missing path and how to create it.
    """


class SchemaMismatch(RadbridgeError):
    """The database's schema revision is not the one this code needs (behind, missing or unknown).

    Only ``radbridge run`` and ``radbridge db upgrade`` migrate; every other command says which
    revision it found and which it needs, in one line, and changes nothing.
    """


class DeliveryError(RadbridgeError):
    """One delivery attempt to a destination failed.

    The text (kept in the outbox row's ``last_error``) may quote the receiver (an MSA-3, an HTTP body)
    and so the patient; ``public`` is the reason worded from no message data (a status, a host, a
    timeout), which the log line of a failed attempt gives. "": only the exception's type is logged.
    """

    def __init__(self, text: str, public: str = "") -> None:
        super().__init__(text)
        self.public = public


class RetryableDelivery(DeliveryError):
    """The attempt failed in a way that may succeed later."""


class PermanentDelivery(DeliveryError):
    """The receiver refused the message; retrying cannot help."""


@dataclass(frozen=True, slots=True)
class ErrorLocation:
    """An ERR-2 location: segment id, segment sequence (1-based), field, component."""

    segment: str
    sequence: int = 1
    field: int | None = None
    component: int | None = None

    def __str__(self) -> str:
        parts = [self.segment, str(self.sequence)]
        if self.field is not None:
            parts.append(str(self.field))
            if self.component is not None:
                parts.append(str(self.component))
        return "^".join(parts)


class HL7Error(RadbridgeError):
    """An inbound HL7 message that is answered with an error ACK.

    ``code`` is from HL7 table 0357 (100 segment sequence error … 207 application
    internal error); ``ack_code`` is the MSA-1 to answer with.
    """

    ack_code = "AE"

    def __init__(self, code: int, text: str, location: ErrorLocation | None = None) -> None:
        super().__init__(f"{code} {text}" + (f" at {location}" if location else ""))
        self.code = code
        self.text = text
        self.location = location


class HL7Reject(HL7Error):
    """AR: the message type, event, processing id or version is not accepted."""

    ack_code = "AR"


class HL7ApplicationError(HL7Error):
    """AE: the message was understood but cannot be applied."""

    ack_code = "AE"


#: HL7 table 0357 message error condition codes and their display text.
TABLE_0357: dict[int, str] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}
