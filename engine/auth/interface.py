"""The contract between the HTTP APIs and whatever decides who may call them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from engine.errors import RadbridgeError

#: What a request does with a resource type: SMART v2 "r" covers read (and vread/history),
#: "s" covers search; SMART v1 ".read" covers both.
Interaction = Literal["read", "search"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the registered client and the scopes its token carries.

    ``client_id`` is the actor written to the audit trail for every PHI access.
    """

    client_id: str
    scopes: frozenset[str]
    token_id: str | None = None


class AuthFailure(RadbridgeError):
    """The request may not proceed: 401 (no/invalid/expired token) or 403 (scope).

    ``error`` is the RFC 6750 error code for ``WWW-Authenticate``
    (``invalid_token``, ``insufficient_scope``, ``invalid_request``).
    """

    def __init__(self, status: Literal[401, 403], error: str, description: str) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description


class Authorizer(Protocol):
    """Decides who is calling and what they may do; one instance per engine process."""

    def authenticate(self, authorization_header: str | None) -> Principal:
        """The caller of a request with this ``Authorization`` header, or AuthFailure(401)."""
        ...

    def require(self, principal: Principal, resource_type: str, interaction: Interaction) -> None:
        """Return if ``principal`` may do ``interaction`` on ``resource_type``; else AuthFailure(403)."""
        ...
