"""Client assertions: the signed JWT a SMART backend service authenticates with (pure).

SMART Backend Services (HL7 FHIR SMART App Launch 2.x, "Backend Services",
authentication JWT; RFC 7523 3): the assertion is signed with RS384 or ES384 by a
key in the client's registered JWKS and carries ``iss`` = ``sub`` = the client id,
``aud`` = the token endpoint URL, ``exp`` no more than five minutes ahead and a
``jti`` used once (the caller records it: :mod:`engine.auth.replay`). Any other
``alg`` (``none``, ``HS256`` …) is refused before a key is looked at.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK
from jwt.exceptions import InvalidTokenError, PyJWTError

from engine.auth.clients import ASSERTION_ALGORITHMS, Client
from engine.auth.oauth import OAuthError

__all__ = ["MAX_JTI_LENGTH", "VerifiedAssertion", "claimed_client_id", "verify_assertion"]

#: Longest ``jti`` accepted (its column's width).
MAX_JTI_LENGTH = 255

#: PyJWT's exception for a claim check -> the reason told to the client and written to the audit trail.
_REASONS: dict[type[InvalidTokenError], str] = {
    jwt.ExpiredSignatureError: "the assertion has expired (exp)",
    jwt.ImmatureSignatureError: "the assertion is not valid yet (nbf/iat in the future)",
    jwt.InvalidAudienceError: "the assertion's aud is not this token endpoint",
    jwt.InvalidIssuerError: "the assertion's iss is not the client id",
    jwt.MissingRequiredClaimError: "the assertion lacks a required claim (iss, sub, aud, exp, jti)",
    jwt.InvalidSignatureError: "the assertion's signature does not verify with the client's keys",
}


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    """What a verified assertion tells: its ``jti`` and when it expires (epoch seconds)."""

    jti: str
    exp: int


def _invalid(description: str) -> OAuthError:
    return OAuthError("invalid_client", description)


def claimed_client_id(assertion: str) -> str:
    """The ``iss`` of an assertion, unverified: only to find whose keys to verify it with."""
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except InvalidTokenError as exc:
        raise _invalid("client_assertion is not a JWT") from exc
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise _invalid("the assertion has no iss (the client id)")
    return issuer


def _keys(client: Client, alg: str, kid: str | None) -> list[Any]:
    """The client's public keys usable with ``alg`` (only the one named ``kid`` when given)."""
    kty, crv = ASSERTION_ALGORITHMS[alg]
    keys = []
    for jwk in json.loads(client.jwks or '{"keys": []}')["keys"]:
        if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
            continue
        if jwk.get("alg", alg) != alg or (kid is not None and jwk.get("kid") != kid):
            continue
        try:
            keys.append(PyJWK(jwk, alg).key)
        except PyJWTError:
            continue  # checked at registration; a key this PyJWT cannot read simply does not match
    return keys


def _header(assertion: str) -> tuple[str, str | None]:
    try:
        header = jwt.get_unverified_header(assertion)
    except InvalidTokenError as exc:
        raise _invalid("client_assertion is not a JWT") from exc
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in ASSERTION_ALGORITHMS:
        raise _invalid(f"assertion alg {str(alg)[:16]!r} is not accepted (RS384, ES384)")
    return alg, kid if isinstance(kid, str) else None


def _decode(assertion: str, key: Any, alg: str, client_id: str, audience: str, leeway: float) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        assertion, key, algorithms=[alg], audience=audience, issuer=client_id, leeway=leeway,
        options={"require": ["iss", "sub", "aud", "exp", "jti"]})
    return claims


def verify_assertion(
    assertion: str, client: Client, audience: str, now: Callable[[], float], max_lifetime: float, leeway: float,
) -> VerifiedAssertion:
    """Verify ``assertion`` for ``client`` at the token endpoint ``audience``; OAuthError(invalid_client) if not.

    ``max_lifetime`` bounds how far ahead ``exp`` may be (SMART: five minutes);
    ``leeway`` absorbs clock skew in every time check.
    """
    if client.auth_method != "private_key_jwt":
        raise _invalid("this client authenticates with its client secret, not an assertion")
    alg, kid = _header(assertion)
    keys = _keys(client, alg, kid)
    if not keys:
        raise _invalid(f"no registered key of this client fits alg {alg}" + (f" and kid {kid[:64]!r}" if kid else ""))
    claims: dict[str, Any] | None = None
    for key in keys:
        try:
            claims = _decode(assertion, key, alg, client.client_id, audience, leeway)
            break
        except jwt.InvalidSignatureError:
            continue  # another of the client's keys (no kid given) may verify it
        except InvalidTokenError as exc:
            raise _invalid(_REASONS.get(type(exc), "the assertion is not valid")) from exc
    if claims is None:
        raise _invalid(_REASONS[jwt.InvalidSignatureError])
    return _checked(claims, client.client_id, now(), max_lifetime, leeway)


def _checked(claims: dict[str, Any], client_id: str, now: float, max_lifetime: float,
             leeway: float) -> VerifiedAssertion:
    if claims.get("sub") != client_id:
        raise _invalid("the assertion's sub is not the client id")
    jti, exp = claims.get("jti"), claims.get("exp")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise _invalid(f"the assertion's jti must be a string of 1-{MAX_JTI_LENGTH} characters")
    if not isinstance(exp, int | float) or exp > now + max_lifetime + leeway:
        raise _invalid(f"the assertion's exp is more than {int(max_lifetime)} s ahead")
    return VerifiedAssertion(jti, int(exp))
