"""The CapabilityStatement (``GET /fhir/metadata``): exactly what this server supports, from the registry."""

from __future__ import annotations

from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from engine.fhir.model import Param
from engine.fhir.registry import FULL_HISTORY, MODULES
from engine.fhir.store import dumps

__all__ = ["capability_statement"]

_COMMON = (Param("_id", "token", documentation="logical id"),
           Param("_lastUpdated", "date", documentation="when the resource last changed"))


def _version() -> str:
    try:
        return version("radbridge")
    except PackageNotFoundError:
        return "0"


def _search_param(param: Param) -> dict[str, Any]:
    item: dict[str, Any] = {"name": param.name, "type": param.type}
    if param.documentation:
        item["documentation"] = param.documentation
    return item


_SYSTEM_HISTORY = ("every type's stored versions, newest first, with _count, _since and next links; needs read "
                   "on every type (system/*.rs)")
_KEPT = "the current version, and earlier ones only while http.fhir.history keeps them (default: none)"


def _interactions(res_type: str) -> list[dict[str, Any]]:
    """read, vread, history-instance, history-type, search-type; vread and history say what they serve."""
    history = [{"code": "vread"}, {"code": "history-instance"}, {"code": "history-type"}]
    if res_type not in FULL_HISTORY:
        history = [{**h, "documentation": _KEPT} for h in history]
    return [{"code": "read"}, *history, {"code": "search-type"}]


def _resource(module: Any) -> dict[str, Any]:
    revincludes = sorted(i for m in MODULES for i in m.INCLUDES
                         if module.TYPE in next(p for p in m.PARAMS if p.name == i.split(":")[1]).targets)
    item: dict[str, Any] = {
        "type": module.TYPE,
        "interaction": _interactions(module.TYPE),
        "versioning": "versioned", "readHistory": True, "conditionalRead": "full-support",
        "searchParam": [_search_param(p) for p in (*_COMMON, *module.PARAMS)],
    }
    if module.INCLUDES:
        item["searchInclude"] = list(module.INCLUDES)
    if revincludes:
        item["searchRevInclude"] = revincludes
    return item


#: Report documents (engine.fhir.binary): read only, by the URL a DiagnosticReport's presentedForm gives.
_BINARY: dict[str, Any] = {
    "type": "Binary",
    "documentation": "the documents of DiagnosticReport.presentedForm (a PDF report, a long report text) by "
                     "their url; read needs read on Binary (system/Binary.r, .rs, .read) or on DiagnosticReport",
    "interaction": [{"code": "read", "documentation": "the document's own bytes (its contentType), or the Binary "
                                                      "resource when FHIR JSON is asked for (Accept or _format)"}],
}


def capability_statement(base_url: str, started: datetime, auth_description: str) -> str:
    """The statement as JSON text (R4 CapabilityStatement, kind ``instance``)."""
    return dumps({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": started.isoformat(timespec="seconds"),
        "publisher": "radbridge",
        "kind": "instance",
        "software": {"name": "radbridge", "version": _version()},
        "implementation": {"description": "radbridge FHIR R4 facade (read-only)", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "SMART-on-FHIR"}]}],
                "description": auth_description,
            },
            "resource": [_BINARY, *(_resource(m) for m in sorted(MODULES, key=lambda m: m.TYPE))],
            "interaction": [{"code": "history-system", "documentation": _SYSTEM_HISTORY}],
        }],
    })
