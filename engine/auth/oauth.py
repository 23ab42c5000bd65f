"""Token endpoint errors (RFC 6749 5.2) and how each is answered."""

from __future__ import annotations

from typing import Any

from engine.errors import RadbridgeError

__all__ = ["STATUS", "OAuthError"]

#: RFC 6749 5.2 error code -> HTTP status. ``invalid_client`` is 401 (the client could
#: not be authenticated); every other refusal of a well-formed request is 400.
STATUS: dict[str, int] = {
    "invalid_request": 400,
    "invalid_client": 401,
    "invalid_grant": 400,
    "unauthorized_client": 400,
    "unsupported_grant_type": 400,
    "invalid_scope": 400,
}


class OAuthError(RadbridgeError):
    """The token request is refused with an RFC 6749 error code and a description.

    The description is sent to the client and written to the audit trail: it names
    what is wrong, never a secret, an assertion or a token.
    """

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description

    @property
    def status(self) -> int:
        """The HTTP status of the answer."""
        return STATUS[self.error]

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return {"error": self.error, "error_description": self.description}
