"""The token endpoint's work: authenticate the client, grant scopes, issue, audit.

RFC 6749 4.4 (client credentials) as SMART Backend Services profiles it. Every
answer, issued or refused, is written to the audit trail (``auth.token`` /
``auth.token_refused``, object ``client``/client id, with the caller's IP address
and the reason); an accepted assertion's ``jti`` is recorded in the same
transaction, so a replay is refused even after a crash. Nothing secret (client
secret, assertion, access token) is logged or audited: only the access token's id.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Connection

from engine.audit import Actor, record
from engine.auth import scopes
from engine.auth.assertion import verify_assertion
from engine.auth.client_secret import verify_secret
from engine.auth.clients import Client, find_client
from engine.auth.limiter import FailureLimiter
from engine.auth.oauth import OAuthError
from engine.auth.replay import keep_until, use_jti
from engine.auth.request import AssertionCredentials, SecretCredentials, TokenRequest
from engine.auth.tokens import TokenSigner
from engine.config.models import AuthConfig
from engine.store.database import Database

__all__ = ["Issued", "TokenService", "api_actor"]

log = logging.getLogger(__name__)

#: Remembered keys of the failure limiters (about 200 bytes each).
MAX_LIMITER_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class Issued:
    """A successful token response (RFC 6749 5.1)."""

    access_token: str
    expires_in: int
    scope: str

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return {"access_token": self.access_token, "token_type": "bearer", "expires_in": self.expires_in,
                "scope": self.scope}


def _pair(client_id: str, ip: str) -> str:
    """The limiter key of a client id (as claimed, so cut short: it bounds the memory) and an address."""
    return f"{client_id[:128]}\n{ip}"


def api_actor(client_id: str) -> Actor:
    """The audit actor for an API caller: the client, on this engine's host and process."""
    return Actor(client_id or "(none)", os.geteuid(), socket.gethostname(), os.getpid(), None, None)


@dataclass(frozen=True, slots=True)
class _Grant:
    client: Client
    scopes: tuple[str, ...]
    jti: tuple[str, int] | None  # the assertion's jti and exp, to record


class TokenService:
    """Answers token requests for one engine process."""

    def __init__(self, config: AuthConfig, db: Database, signer: TokenSigner, clock: Callable[[], float]) -> None:
        self.config = config
        self.db = db
        self.signer = signer
        self.clock = clock
        window = config.failure_window_seconds
        self.per_client_ip = FailureLimiter(config.max_failures_per_client_ip, window, MAX_LIMITER_KEYS, clock)
        self.per_ip = FailureLimiter(config.max_failures_per_ip, window, MAX_LIMITER_KEYS, clock)

    def retry_after(self, ip: str, client_id: str = "") -> float:
        """Seconds this caller must wait after too many failures; 0 if it may try now."""
        waits = [self.per_ip.retry_after(ip)]
        if client_id:
            waits.append(self.per_client_ip.retry_after(_pair(client_id, ip)))
        return max(waits)

    async def issue(self, request: TokenRequest, ip: str, token_url: str) -> Issued:
        """Issue an access token for ``request``, or raise OAuthError; audited either way."""
        client_id = request.credentials.client_id
        try:
            grant = await self._grant(request, token_url)
        except OAuthError as exc:
            await self.refuse(exc, ip, client_id)
            raise
        token, token_id = self.signer.issue(grant.client.client_id, list(grant.scopes), int(self.clock()),
                                            self.config.token_lifetime_seconds)
        replayed = await self.db.writer.run(partial(self._record_issue, grant=grant, ip=ip, token_id=token_id))
        if replayed is not None:
            self._failed(replayed, ip, client_id)
            raise replayed
        log.info("access token issued to client %s (%s) from %s", grant.client.client_id, grant.client.name, ip)
        return Issued(token, self.config.token_lifetime_seconds, " ".join(grant.scopes))

    async def refuse(self, error: OAuthError, ip: str, client_id: str) -> None:
        """Audit and count a refused request (also for errors found before ``issue``)."""
        self._failed(error, ip, client_id)
        await self.db.writer.run(partial(self._record_refusal, error=error, ip=ip, client_id=client_id))

    def _failed(self, error: OAuthError, ip: str, client_id: str) -> None:
        log.info("token request refused (client %r from %s): %s", client_id[:64], ip, error.error)
        blocked = self.per_ip.fail(ip)
        if client_id:
            blocked = self.per_client_ip.fail(_pair(client_id, ip)) or blocked
        if blocked:
            log.warning("token requests from %s (client %r) blocked for up to %.0f s after repeated failures", ip,
                        client_id[:64], self.config.failure_window_seconds)

    async def _grant(self, request: TokenRequest, token_url: str) -> _Grant:
        if request.grant_type != "client_credentials":
            raise OAuthError("unsupported_grant_type", "only grant_type=client_credentials is supported")
        creds = request.credentials
        client = await self.db.read_async(partial(find_client, client_id=creds.client_id))
        if client is None:
            raise OAuthError("invalid_client", "unknown client")
        jti = self._authenticate(client, creds, token_url)
        return _Grant(client, self._scopes(client, request.scope), jti)

    def _authenticate(self, client: Client, creds: AssertionCredentials | SecretCredentials,
                      token_url: str) -> tuple[str, int] | None:
        if isinstance(creds, SecretCredentials):
            if client.auth_method != "client_secret":
                raise OAuthError("invalid_client", "this client authenticates with an assertion (private_key_jwt)")
            if not verify_secret(creds.secret, client.secret_hash):
                raise OAuthError("invalid_client", "client authentication failed")
            return None
        verified = verify_assertion(creds.assertion, client, token_url, self.clock,
                                    self.config.max_assertion_lifetime_seconds, self.config.clock_skew_seconds)
        return verified.jti, verified.exp

    @staticmethod
    def _scopes(client: Client, requested: str | None) -> tuple[str, ...]:
        if not requested or not requested.split():
            raise OAuthError("invalid_scope", "scope is required (e.g. system/ImagingStudy.rs)")
        wanted, _ = scopes.parse_many(requested.split())  # scopes radbridge does not know are not granted
        registered, _ = scopes.parse_many(client.scopes)
        granted = scopes.grant(registered, wanted)
        if not granted:
            raise OAuthError("invalid_scope", "none of the requested scopes is granted to this client")
        return tuple(scopes.render(s) for s in granted)

    def _record_issue(self, conn: Connection, grant: _Grant, ip: str, token_id: str) -> OAuthError | None:
        """Record the jti and the audit event; the refusal to answer instead if the jti was used before."""
        if grant.jti is not None:
            jti, exp = grant.jti
            if not use_jti(conn, grant.client.client_id, jti, keep_until(exp, self.config.clock_skew_seconds)):
                error = OAuthError("invalid_client", "the assertion's jti was used before (replay)")
                self._record_refusal(conn, error, ip, grant.client.client_id)
                return error
        record(conn, "auth.token", "client", grant.client.client_id,
               {"ip": ip, "client_name": grant.client.name, "scope": " ".join(grant.scopes),
                "token_id": token_id, "expires_in": self.config.token_lifetime_seconds},
               api_actor(grant.client.client_id))
        return None

    @staticmethod
    def _record_refusal(conn: Connection, error: OAuthError, ip: str, client_id: str) -> None:
        record(conn, "auth.token_refused", "client", client_id[:128],
               {"ip": ip, "error": error.error, "reason": error.description}, api_actor(client_id[:128]))
