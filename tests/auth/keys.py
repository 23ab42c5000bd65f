"""Client keys for the SMART tests: generated with ``cryptography``, published and used with joserfc.

The server verifies assertions with PyJWT; these helpers build them with a different
JOSE library, so a test passes only if the two agree on the standards.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class ClientKey:
    """A private key, its algorithm and its kid."""

    alg: str
    jwk: RSAKey | ECKey

    @property
    def kid(self) -> str:
        return str(self.jwk.kid)


def rsa_key(kid: str = "rsa-1", bits: int = 2048) -> ClientKey:
    return ClientKey("RS384", RSAKey.import_key(rsa.generate_private_key(65537, bits), parameters={"kid": kid}))


def ec_key(kid: str = "ec-1", curve: ec.EllipticCurve | None = None) -> ClientKey:
    return ClientKey("ES384", ECKey.import_key(ec.generate_private_key(curve or ec.SECP384R1()),
                                               parameters={"kid": kid}))


def jwks(*keys: ClientKey) -> str:
    """The public JWKS document of ``keys``."""
    return json.dumps(KeySet([k.jwk for k in keys]).as_dict(private=False))


def assertion(key: ClientKey, client_id: str, token_url: str, *, lifetime: int = 240, alg: str | None = None,
              header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> str:
    """A client assertion signed by ``key`` (claims may be overridden or removed with None)."""
    now = int(time.time())
    body: dict[str, Any] = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + lifetime, "iat": now,
                            "jti": secrets.token_urlsafe(16)}
    body.update(claims or {})
    body = {k: v for k, v in body.items() if v is not None}
    head = {"alg": alg or key.alg, "kid": key.kid, **(header or {})}
    head = {k: v for k, v in head.items() if v is not None}
    return jwt.encode(head, body, key.jwk, algorithms=[head["alg"]])


def hs256_assertion(secret: str, client_id: str, aud: str) -> str:
    """An assertion MACed with HS256 (which the server must refuse)."""
    now = int(time.time())
    body = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + 240, "jti": secrets.token_urlsafe(16)}
    return jwt.encode({"alg": "HS256"}, body, OctKey.import_key(secret), algorithms=["HS256"])


def unsigned_assertion(client_id: str, aud: str) -> str:
    """An ``alg: none`` JWT, built by hand (no library signs with none by default)."""
    import base64

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return part({"alg": "none", "typ": "JWT"}) + "." + part(
        {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + 240, "jti": secrets.token_urlsafe(16)}) + "."
