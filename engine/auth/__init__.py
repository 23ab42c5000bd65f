"""Authorization of HTTP clients (SMART Backend Services and client secrets).

This package's public contract is what the FHIR API depends on; the implementation
(token endpoint, JWT assertion checks, client registry) lives in its modules::

    authorizer.authenticate(authorization_header)  -> Principal   (AuthFailure 401)
    authorizer.require(principal, "ImagingStudy", "search")        (AuthFailure 403)

The API turns an ``AuthFailure`` into its ``status`` with an OperationOutcome and a
``WWW-Authenticate`` header (:func:`engine.auth.authorizer.www_authenticate`); it never
answers PHI before ``require`` has passed. The implementation, with the token endpoint
and SMART configuration routes to mount, is :class:`engine.auth.smart.SmartAuth`
(docs/fhir-auth.md).
"""

from engine.auth.interface import (
    AuthFailure,
    Authorizer,
    Interaction,
    Principal,
)

__all__ = ["AuthFailure", "Authorizer", "Interaction", "Principal"]
