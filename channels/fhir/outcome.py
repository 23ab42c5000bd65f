"""FHIR responses: the media type, OperationOutcome, and the API's own errors."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response

from engine.errors import RadbridgeError
from engine.fhir.store import dumps

__all__ = ["FHIR_JSON", "ApiError", "fhir_response", "outcome", "outcome_response"]

FHIR_JSON = "application/fhir+json; charset=utf-8"


class ApiError(RadbridgeError):
    """A request answered with ``status`` and an OperationOutcome (R4 issue-type ``code``)."""

    def __init__(self, status: int, code: str, diagnostics: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics = status, code, diagnostics
        self.headers = dict(headers or {})


def outcome(code: str, diagnostics: str, severity: str = "error") -> str:
    """An OperationOutcome with one issue, as JSON text."""
    return dumps({"resourceType": "OperationOutcome",
                  "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]})


def fhir_response(body: str, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A FHIR JSON response carrying ``body`` as is."""
    return Response(body.encode(), status, headers=dict(headers or {}), media_type=FHIR_JSON)


def outcome_response(error: ApiError) -> Response:
    """The response for an :class:`ApiError`."""
    return fhir_response(outcome(error.code, error.diagnostics), error.status, error.headers)
