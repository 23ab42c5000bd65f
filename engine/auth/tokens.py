"""Access tokens: short-lived JWTs that radbridge issues and only radbridge verifies.

Why a signed token rather than an opaque one stored in the database: the HTTP API
checks a token on every request, and a signature check is a few microseconds of CPU
with no database round trip and nothing to clean up; several engines sharing one
database verify each other's tokens when they share the key. The token only ever
comes back to radbridge, so a MAC (HS256, RFC 7518 3.2) with a 256-bit engine key
is the right tool: there is no third party that would need a public key. The price
is revocation: a removed client's tokens stay valid until they expire, which is why
they live five minutes by default.

The key comes from ``RADBRIDGE_AUTH_TOKEN_KEY`` (base64url, at least 32 bytes) when
set, for several engines behind a load balancer, else from ``<data_dir>/auth-token.key``,
created at first start with 32 random bytes and mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt.exceptions import InvalidTokenError

from engine.auth.interface import AuthFailure
from engine.errors import ConfigError

__all__ = ["KEY_ENV", "KEY_FILE", "AccessToken", "TokenSigner", "load_key"]

KEY_ENV = "RADBRIDGE_AUTH_TOKEN_KEY"
KEY_FILE = "auth-token.key"
_MIN_KEY_BYTES = 32
_ALG = "HS256"
#: ``iss`` and ``aud`` of every access token: tokens of another issuer never verify here.
_ISSUER = "radbridge"
_AUDIENCE = "radbridge-api"


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A verified access token's claims."""

    client_id: str
    scopes: frozenset[str]
    token_id: str
    expires_at: int


def _decode_key(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ConfigError([f"{KEY_ENV}: not base64url"]) from exc
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError([f"{KEY_ENV}: the key must be at least {_MIN_KEY_BYTES} bytes (got {len(key)})"])
    return key


def _create_key_file(path: Path) -> None:
    """Write 32 random bytes to ``path`` (0600) unless it exists; never half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(_MIN_KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created it first: theirs wins
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_key(data_dir: Path, environ: Mapping[str, str] = os.environ) -> bytes:
    """The access token key: ``RADBRIDGE_AUTH_TOKEN_KEY`` if set, else the data directory's key file."""
    if environ.get(KEY_ENV):
        return _decode_key(environ[KEY_ENV])
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _create_key_file(path)
    key = path.read_bytes()
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError([f"{path}: the access token key must be at least {_MIN_KEY_BYTES} bytes"])
    return key


class TokenSigner:
    """Issues and verifies access tokens with one key."""

    def __init__(self, key: bytes, leeway: float = 0.0) -> None:
        self._key = key
        self._leeway = leeway
        #: Names the key without revealing it (the token header's ``kid``).
        self.key_id = hashlib.sha256(b"radbridge-token-key:" + key).hexdigest()[:16]

    def issue(self, client_id: str, scopes: list[str], now: int, lifetime: int) -> tuple[str, str]:
        """A signed token for ``client_id`` with ``scopes``, and its ``jti``."""
        jti = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {"iss": _ISSUER, "aud": _AUDIENCE, "sub": client_id, "scope": " ".join(scopes),
                                  "iat": now, "exp": now + lifetime, "jti": jti}
        return jwt.encode(claims, self._key, algorithm=_ALG, headers={"kid": self.key_id}), jti

    def verify(self, token: str) -> AccessToken:
        """The claims of ``token`` if this key signed it and it has not expired; else AuthFailure(401)."""
        try:
            claims = jwt.decode(token, self._key, algorithms=[_ALG], audience=_AUDIENCE, issuer=_ISSUER,
                                leeway=self._leeway, options={"require": ["sub", "exp", "iat", "jti", "scope"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthFailure(401, "invalid_token", "the access token has expired") from exc
        except InvalidTokenError as exc:
            raise AuthFailure(401, "invalid_token", "the access token is not valid here") from exc
        sub, scope, jti = claims.get("sub"), claims.get("scope"), claims.get("jti")
        if not (isinstance(sub, str) and isinstance(scope, str) and isinstance(jti, str)):
            raise AuthFailure(401, "invalid_token", "the access token is not valid here")
        return AccessToken(sub, frozenset(scope.split()), jti, int(claims["exp"]))
