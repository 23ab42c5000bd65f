"""Values shared by the resource modules, the projector and the search: built resources, parameters, settings."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sqlalchemy import Connection

if TYPE_CHECKING:
    from engine.fhir.push import PushSubscription

__all__ = ["Built", "FhirSettings", "Param", "ParamType", "ResourceModule", "Version", "identifier_system"]

ParamType = Literal["token", "reference", "date", "string"]


@dataclass(frozen=True, slots=True)
class Param:
    """One search parameter: its FHIR type, and for references the types it may point at."""

    name: str
    type: ParamType
    targets: tuple[str, ...] = ()
    documentation: str = ""


@dataclass(frozen=True, slots=True)
class Version:
    """One earlier version of a resource whose versions come from the domain (a report's versions).

    ``last_updated`` is when radbridge stored it (a FHIR instant); ``body`` as :attr:`Built.body`.
    """

    version_id: int
    last_updated: str
    body: dict[str, Any]


@dataclass(slots=True)
class Built:
    """A resource as built from the domain: its JSON (without ``meta``) and its index entries.

    Index keys are the parameter names of its type (``identifier``); the projector
    prefixes the type (``ImagingStudy.identifier``).
    """

    res_type: str
    res_id: str
    body: dict[str, Any]
    tokens: list[tuple[str, str, str]] = field(default_factory=list)  # (param, system, code)
    refs: list[tuple[str, str]] = field(default_factory=list)  # (param, "Type/id")
    dates: list[tuple[str, str, str]] = field(default_factory=list)  # (param, low, high)
    strings: list[tuple[str, str]] = field(default_factory=list)  # (param, value)
    #: Set for a type whose versions are the domain's own (DiagnosticReport: the report versions):
    #: ``version_id`` is the current body's version and ``earlier`` every version before it. None for
    #: the other types, numbered by the store (a new version whenever the content changes).
    version_id: int | None = None
    earlier: tuple[Version, ...] = ()


@dataclass(frozen=True, slots=True)
class FhirSettings:
    """What the resources need from the configuration."""

    site_zone: tzinfo
    dicomweb_base: str | None = None
    identifier_systems: Mapping[str, str] = field(default_factory=dict)
    accession_system: str = "urn:radbridge:accession"
    patient_id_system: str = "urn:radbridge:patient-id"
    push: tuple[PushSubscription, ...] = ()  # FHIR push destinations fed by the projector (engine.fhir.push)


_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def identifier_system(settings: FhirSettings, namespace: str, fallback: str) -> str:
    """The FHIR identifier system (a URI) of an HL7/DICOM assigning authority or namespace.

    Configured names first; an OID becomes ``urn:oid:``; a URI stays itself; another
    name ``N`` becomes ``<fallback>:N``; no namespace at all, ``fallback``.
    """
    if namespace in settings.identifier_systems:
        return settings.identifier_systems[namespace]
    if not namespace:
        return fallback
    if _OID.match(namespace):
        return f"urn:oid:{namespace}"
    if re.match(r"^[a-z][a-z0-9+.-]*:\S+$", namespace):
        return namespace
    return f"{fallback}:{re.sub(r'[^A-Za-z0-9._-]', '_', namespace)}"


class ResourceModule(Protocol):
    """One resource type of the facade (see :mod:`engine.fhir.registry`).

    ``kinds`` maps each ``fhir_pending.kind`` this module listens to onto a function giving
    the ids of this type to rebuild for those keys. ``build`` returns, per id, the built
    resource, or None when its domain rows are gone.
    """

    TYPE: str
    PARAMS: tuple[Param, ...]
    INCLUDES: tuple[str, ...]
    MANDATORY: tuple[str, ...]

    def kinds(self) -> Mapping[str, Callable[[Connection, set[str]], set[str]]]: ...

    def build(self, conn: Connection, ids: set[str], settings: FhirSettings) -> dict[str, Built | None]: ...
