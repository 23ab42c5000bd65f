"""Conditional-update keys: by which identifier each resource type is upserted on the remote server.

FHIR R4 http.html 3.1.0.4.3: ``PUT [base]/[type]?identifier=system|value`` creates the
resource when nothing matches, updates it when one does, and answers 412 when several
do. The key must be an identifier the resource keeps for life, so every version lands
on the same remote resource. One rule per type, in a table: adding a type is one row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

__all__ = ["RULES", "conditional_key", "conditional_path"]

_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

Identifier = tuple[str, str]  # (system, value)


def _typed(code: str) -> Callable[[dict[str, Any]], Identifier | None]:
    """The first identifier whose ``type`` is v2-0203 ``code`` (ACSN, MR …) and has a system and value."""
    def rule(resource: dict[str, Any]) -> Identifier | None:
        for ident in resource.get("identifier", []):
            codings = ident.get("type", {}).get("coding", [])
            typed = any(c.get("system") == _V2_0203 and c.get("code") == code for c in codings)
            if typed and ident.get("system") and ident.get("value"):
                return str(ident["system"]), str(ident["value"])
        return None
    return rule


def _system(system: str) -> Callable[[dict[str, Any]], Identifier | None]:
    """The identifier with ``system`` (ImagingStudy: ``urn:dicom:uid``, value ``urn:oid:<uid>``)."""
    def rule(resource: dict[str, Any]) -> Identifier | None:
        for ident in resource.get("identifier", []):
            if ident.get("system") == system and ident.get("value"):
                return system, str(ident["value"])
        return None
    return rule


def _first_of(*rules: Callable[[dict[str, Any]], Identifier | None]) -> Callable[[dict[str, Any]], Identifier | None]:
    def rule(resource: dict[str, Any]) -> Identifier | None:
        return next((found for r in rules if (found := r(resource)) is not None), None)
    return rule


def _based_on_accession(resource: dict[str, Any]) -> Identifier | None:
    """A DiagnosticReport without its own ACSN identifier: the one on ``basedOn`` (IHE IMR)."""
    for ref in resource.get("basedOn", []):
        found = _typed("ACSN")({"identifier": [ref.get("identifier", {})]})
        if found is not None:
            return found
    return None


#: resource type → its conditional-update identifier (None: the resource cannot be upserted).
RULES: dict[str, Callable[[dict[str, Any]], Identifier | None]] = {
    "ImagingStudy": _system("urn:dicom:uid"),  # FHIR.md: Study Instance UID, urn:oid:<uid>
    "DiagnosticReport": _first_of(_typed("ACSN"), _based_on_accession),  # keyed by accession
    "Patient": _typed("MR"),  # the patient id with its issuer (PID-3)
    "ServiceRequest": _first_of(_typed("ACSN"), _typed("PLAC")),
}


def conditional_key(resource: dict[str, Any]) -> Identifier | None:
    """The identifier ``resource`` is upserted by, or None (no rule for its type, or no such identifier)."""
    rule = RULES.get(str(resource.get("resourceType", "")))
    return rule(resource) if rule is not None else None


def conditional_path(res_type: str, key: Identifier) -> str:
    """``Type?identifier=system|value``, percent-encoded (``|`` too, as clients do)."""
    return f"{res_type}?identifier={quote(f'{key[0]}|{key[1]}', safe='')}"
