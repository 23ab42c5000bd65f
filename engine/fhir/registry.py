"""The resource types the facade serves: one module each, registered here and nowhere else.

Adding a type is one module with
``TYPE``, ``PARAMS``, ``INCLUDES``, ``MANDATORY``, ``kinds()`` and ``build()`` (the
:class:`~engine.fhir.model.ResourceModule` contract), its name in ``MODULES``,
and the triggers of its source tables in :data:`engine.fhir.triggers.SOURCES`.
"""

from __future__ import annotations

from engine.fhir.model import Param, ResourceModule
from engine.fhir.resources import diagnostic_report, endpoint, imaging_study, patient, service_request

__all__ = ["FULL_HISTORY", "MODULES", "by_type", "param"]

MODULES: tuple[ResourceModule, ...] = (imaging_study, patient, service_request, endpoint, diagnostic_report)

#: Types whose every version is kept and served by vread and ``_history`` (a report's versions are
#: clinically meaningful). The other types keep what ``http.fhir.history`` says (engine.fhir.retention).
FULL_HISTORY: frozenset[str] = frozenset({diagnostic_report.TYPE})

_BY_TYPE = {m.TYPE: m for m in MODULES}


def by_type(res_type: str) -> ResourceModule | None:
    """The module serving ``res_type``, or None."""
    return _BY_TYPE.get(res_type)


def param(res_type: str, name: str) -> Param | None:
    """The search parameter ``name`` of ``res_type``, or None."""
    module = _BY_TYPE.get(res_type)
    return next((p for p in module.PARAMS if p.name == name), None) if module is not None else None
