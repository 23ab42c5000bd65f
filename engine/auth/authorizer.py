"""The :class:`~engine.auth.interface.Authorizer` for radbridge's own access tokens.

``authenticate`` verifies the Bearer token's signature and expiry (no database
access: it runs on every request; a token verified once is remembered until it expires,
:mod:`engine.auth.token_cache`); ``require`` checks the token's SMART scopes for
the resource type and interaction (:mod:`engine.auth.scopes`).
"""

from __future__ import annotations

from engine.auth import scopes
from engine.auth.interface import AuthFailure, Interaction, Principal
from engine.auth.token_cache import VerifiedTokens
from engine.auth.tokens import TokenSigner

__all__ = ["DEVELOPMENT_CLIENT", "DevelopmentAuthorizer", "SmartAuthorizer", "www_authenticate"]

#: The client a request without a token is served as in ``unauthenticated_development_mode``.
DEVELOPMENT_CLIENT = "development"


class SmartAuthorizer:
    """Bearer tokens issued by this engine's token endpoint (or any engine sharing its key)."""

    def __init__(self, signer: TokenSigner) -> None:
        self._signer = signer
        self._tokens = VerifiedTokens(signer.verify)  # a client reuses its token: verify its signature once

    def authenticate(self, authorization_header: str | None) -> Principal:
        """The caller of a request with this ``Authorization`` header, or AuthFailure(401): ``invalid_token``, or
        no error code when there was no header."""
        if not authorization_header or not authorization_header.strip():  # no credentials: a challenge without
            raise AuthFailure(401, "", "no access token: send Authorization: Bearer <token>")  # an error (RFC 6750 3.1)
        scheme, _, token = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailure(401, "invalid_token", "the Authorization header is not a Bearer token")
        claims = self._tokens.verify(token.strip())
        return Principal(claims.client_id, claims.scopes, claims.token_id)

    def require(self, principal: Principal, resource_type: str, interaction: Interaction) -> None:
        """Return if ``principal``'s scopes allow ``interaction`` on ``resource_type``; else AuthFailure(403)."""
        if scopes.allows(principal.scopes, resource_type, interaction):
            return
        letter = scopes.LETTER[interaction]
        raise AuthFailure(403, "insufficient_scope",
                          f"{interaction} on {resource_type} needs scope system/{resource_type}.{letter} "
                          f"(or .read, or system/*)")


class DevelopmentAuthorizer:
    """``auth.unauthenticated_development_mode``: no token needed; a token sent is still checked.

    A request without ``Authorization`` is the client ``development`` with ``system/*.rs``,
    so the audit trail still says who read what (nobody in particular).
    """

    def __init__(self, real: SmartAuthorizer) -> None:
        self._real = real

    def authenticate(self, authorization_header: str | None) -> Principal:
        """The development client without a header; the token's client with one (or AuthFailure 401)."""
        if not authorization_header or not authorization_header.strip():
            return Principal(DEVELOPMENT_CLIENT, frozenset({"system/*.rs"}))
        return self._real.authenticate(authorization_header)

    def require(self, principal: Principal, resource_type: str, interaction: Interaction) -> None:
        """Scopes are checked as always (the development client's cover every read and search)."""
        self._real.require(principal, resource_type, interaction)


def _quoted(text: str) -> str:
    return '"' + "".join(c for c in text if c.isprintable() and c not in '"\\') + '"'


def www_authenticate(failure: AuthFailure) -> str:
    """The ``WWW-Authenticate`` header for ``failure`` (RFC 6750 3); without an error code when the request
    carried no credentials (3.1: the server SHOULD NOT include one then)."""
    if not failure.error:
        return 'Bearer realm="radbridge"'
    return (f'Bearer realm="radbridge", error={_quoted(failure.error)}, '
            f"error_description={_quoted(failure.description)}")
