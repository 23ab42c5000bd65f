"""The Authorization header of FHIR pushes: none, a static bearer token, or OAuth 2.0 client credentials.

Secrets come from the environment only (the configuration names the variable), read
once when the destination is built: a missing variable is a configuration error at
start, not a dead letter per message. Client credentials (RFC 6749 4.4) keep the
access token until shortly before ``expires_in`` runs out, and drop it when the FHIR
server answers 401 (revoked or rotated), so the next request fetches a new one.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Protocol

import httpx

from engine.config.models import (
    FhirAuthConfig,
    FhirBearerAuthConfig,
    FhirClientCredentialsConfig,
    FhirNoAuthConfig,
)
from engine.errors import ConfigError, PermanentDelivery, RetryableDelivery

__all__ = ["ClientCredentials", "NoAuth", "StaticBearer", "TokenSource", "token_source"]

#: A token is renewed this long before it expires (clock skew, the request's own time on the wire).
EXPIRY_MARGIN_SECONDS = 30.0
#: Lifetime assumed when the token endpoint gives no ``expires_in``.
DEFAULT_LIFETIME_SECONDS = 300.0


class TokenSource(Protocol):
    """Supplies the headers that authorise one request."""

    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        """The Authorization header (or none); a DeliveryError when it cannot be had now."""
        ...

    def invalidate(self) -> None:
        """The server refused the current credentials (401): get new ones next time."""
        ...


class NoAuth:
    """No Authorization header."""

    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        return {}

    def invalidate(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class StaticBearer:
    """A fixed bearer token."""

    token: str

    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def invalidate(self) -> None:
        return None  # nothing to renew: the 401 is retried and, if it persists, dead-lettered


def _token_error(response: httpx.Response) -> str:
    try:
        body = response.json()
        text = f"{body.get('error', '')} {body.get('error_description', '')}".strip()
    except ValueError:
        text = response.text[:200]
    return f"token endpoint HTTP {response.status_code}: {text}"


class ClientCredentials:
    """OAuth 2.0 client credentials grant against ``token_url``, the token cached until it expires."""

    def __init__(self, config: FhirClientCredentialsConfig, secret: str) -> None:
        self._config = config
        self._secret = secret
        self._token: str | None = None
        self._expires = 0.0  # time.monotonic() after which the token is not used
        self._lock = asyncio.Lock()  # one token request at a time; the others wait for its token
        self.requests = 0  # tokens fetched (for the start-up log and tests)

    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                await self._fetch(client)
            return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        self._token = None

    def _request(self) -> tuple[dict[str, str], httpx.BasicAuth | None]:
        form = {"grant_type": "client_credentials"}
        if self._config.scope:
            form["scope"] = self._config.scope
        if self._config.method == "client_secret_post":
            return {**form, "client_id": self._config.client_id, "client_secret": self._secret}, None
        return form, httpx.BasicAuth(self._config.client_id, self._secret)

    async def _fetch(self, client: httpx.AsyncClient) -> None:
        form, basic = self._request()
        try:
            response = await client.post(self._config.token_url, data=form, auth=basic or httpx.USE_CLIENT_DEFAULT,
                                         headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise RetryableDelivery(f"token endpoint: {type(exc).__name__}: {exc}",
                                    f"token endpoint: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise RetryableDelivery(_token_error(response), f"token endpoint: HTTP {response.status_code}")
        if response.status_code != 200:  # invalid_client, invalid_scope …: no retry fixes the configuration
            raise PermanentDelivery(_token_error(response), f"token endpoint: HTTP {response.status_code}")
        try:
            body = response.json()
            token = str(body["access_token"])
            lifetime = float(body.get("expires_in", DEFAULT_LIFETIME_SECONDS))
        except (ValueError, KeyError, TypeError) as exc:
            raise RetryableDelivery(f"token endpoint: unusable answer ({type(exc).__name__})") from exc
        self._token = token
        self._expires = time.monotonic() + max(lifetime - EXPIRY_MARGIN_SECONDS, lifetime / 2)
        self.requests += 1


def _secret(variable: str, where: str) -> str:
    value = os.environ.get(variable, "")
    if not value:
        raise ConfigError([f"{where}: environment variable {variable} is not set (it holds the secret)"])
    return value


def token_source(config: FhirAuthConfig, where: str) -> TokenSource:
    """The token source of ``config``; ConfigError (naming ``where``) when its secret is not in the environment."""
    if isinstance(config, FhirNoAuthConfig):
        return NoAuth()
    if isinstance(config, FhirBearerAuthConfig):
        return StaticBearer(_secret(config.token_env, f"{where}.token_env"))
    return ClientCredentials(config, _secret(config.client_secret_env, f"{where}.client_secret_env"))
