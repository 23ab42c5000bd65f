"""Endpoint (R4): the configured DICOMweb (WADO-RS) base that ImagingStudy.endpoint points at."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection

from engine.fhir.model import Built, FhirSettings, Param
from engine.fhir.resources.imaging_study import ENDPOINT_ID

__all__ = ["INCLUDES", "MANDATORY", "PARAMS", "TYPE", "build", "kinds"]

TYPE: str = "Endpoint"
PARAMS: tuple[Param, ...] = (
    Param("status", "token"),
    Param("connection-type", "token"),
    Param("name", "string"),
)
#: Its elements of cardinality 1..1: kept by ``_elements`` (R4 3.1.1.5.9, mandatory elements SHOULD be returned).
MANDATORY: tuple[str, ...] = ("status", "connectionType", "payloadType", "address")
INCLUDES: tuple[str, ...] = ()
_CONNECTION_TYPES = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"


def kinds() -> Mapping[str, Callable[[Connection, set[str]], set[str]]]:
    """Endpoints change only with the configuration (the projector syncs them at start)."""
    return {"Endpoint": lambda conn, keys: keys}


def build(conn: Connection, keys: set[str], settings: FhirSettings) -> dict[str, Built | None]:
    """The DICOMweb endpoint when ``dicomweb_base`` is configured, else None (removed)."""
    found: dict[str, Built | None] = dict.fromkeys(keys)
    if ENDPOINT_ID not in keys or not settings.dicomweb_base:
        return found
    body: dict[str, Any] = {
        "resourceType": TYPE, "id": ENDPOINT_ID, "status": "active",
        "connectionType": {"system": _CONNECTION_TYPES, "code": "dicom-wado-rs"},
        "name": "DICOMweb (WADO-RS)",
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": settings.dicomweb_base.rstrip("/"),
    }
    built = Built(TYPE, ENDPOINT_ID, body, tokens=[("status", "http://hl7.org/fhir/endpoint-status", "active"),
                                                   ("connection-type", _CONNECTION_TYPES, "dicom-wado-rs")],
                  strings=[("name", "dicomweb (wado-rs)")])
    found[ENDPOINT_ID] = built
    return found
