"""Authorizers this package ships besides the real one in :mod:`engine.auth`.

* :class:`DevelopmentNoAuth` (``http.auth: development-no-auth``): every caller is the
  principal ``development-no-auth`` with every scope. For a developer's machine and
  tests only; the engine logs a warning at start, and the shipped configuration does
  not use it.
* :class:`NoAuthorizer` (``http.auth: smart`` before an :mod:`engine.auth`
  implementation is wired in): refuses every PHI request with 401, so the API never
  serves PHI without authorization.
"""

from __future__ import annotations

from engine.auth import AuthFailure, Interaction, Principal

__all__ = ["DEVELOPMENT_CLIENT", "DevelopmentNoAuth", "NoAuthorizer"]

DEVELOPMENT_CLIENT = "development-no-auth"


class DevelopmentNoAuth:
    """Lets everybody in (development only)."""

    def authenticate(self, authorization_header: str | None) -> Principal:
        """Always the development principal."""
        return Principal(DEVELOPMENT_CLIENT, frozenset({"system/*.rs"}))

    def require(self, principal: Principal, resource_type: str, interaction: Interaction) -> None:
        """Everything is allowed."""


class NoAuthorizer:
    """Refuses everybody: no token can be checked without an authorization implementation."""

    def authenticate(self, authorization_header: str | None) -> Principal:
        """Never returns."""
        raise AuthFailure(401, "invalid_token", "this server has no authorization service configured")

    def require(self, principal: Principal, resource_type: str, interaction: Interaction) -> None:
        """Never reached: authenticate refused."""
        raise AuthFailure(403, "insufficient_scope", "no authorization service configured")
