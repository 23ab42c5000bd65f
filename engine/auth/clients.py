"""The client registry: who may ask the token endpoint for an access token.

A client is registered by an operator (``radbridge clients add``) with either

* ``private_key_jwt``: its public JSON Web Key Set (RFC 7517 5). Each key must be
  usable with RS384 (an RSA key of at least 2048 bits) or ES384 (an EC key on
  P-384); private key members are refused, so a private key pasted by mistake is
  never stored; or
* ``client_secret``: a secret radbridge generates, shown once and stored hashed
  (:mod:`engine.auth.client_secret`).

``client_id`` is random (what the client sends); ``name`` is the operator's label.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK
from jwt.exceptions import PyJWTError
from sqlalchemy import Connection, delete, insert, select

from engine.auth import scopes
from engine.auth.client_secret import hash_secret, new_secret
from engine.auth.tables import auth_clients
from engine.errors import RadbridgeError

__all__ = [
    "ASSERTION_ALGORITHMS",
    "AuthMethod",
    "Client",
    "InvalidRegistration",
    "Registered",
    "add_client",
    "find_client",
    "list_clients",
    "parse_jwks",
    "remove_client",
]

AuthMethod = Literal["private_key_jwt", "client_secret"]

#: The signing algorithms SMART Backend Services requires servers to support, and the
#: only ones accepted for a client assertion: ``alg`` -> (``kty``, ``crv`` or None).
ASSERTION_ALGORITHMS: dict[str, tuple[str, str | None]] = {"RS384": ("RSA", None), "ES384": ("EC", "P-384")}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MIN_RSA_BITS = 2048


class InvalidRegistration(RadbridgeError):
    """A client registration was refused (bad name, scope or JWKS; name already taken)."""


@dataclass(frozen=True, slots=True)
class Client:
    """A registered client as the token endpoint sees it."""

    client_id: str
    name: str
    auth_method: AuthMethod
    scopes: tuple[str, ...]
    jwks: str = ""
    secret_hash: str = ""

    def public_listing(self) -> dict[str, Any]:
        """What ``clients list`` shows: no secret hash, and only the ids of the keys."""
        keys = json.loads(self.jwks)["keys"] if self.jwks else []
        return {"client_id": self.client_id, "name": self.name, "auth_method": self.auth_method,
                "scopes": list(self.scopes), "key_ids": [k.get("kid", "") for k in keys]}


@dataclass(frozen=True, slots=True)
class Registered:
    """The outcome of a registration: the client and, for ``client_secret``, the secret (shown once)."""

    client: Client
    secret: str | None


def _check_key(jwk: Any) -> None:
    if not isinstance(jwk, dict):
        raise InvalidRegistration("every entry of keys must be a JSON object (a JWK)")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise InvalidRegistration(f"key {jwk.get('kid', '')!r} holds private key material: register the public key")
    algs = [alg for alg, (kty, crv) in ASSERTION_ALGORITHMS.items()
            if jwk.get("kty") == kty and (crv is None or jwk.get("crv") == crv)]
    if not algs or jwk.get("alg", algs[0]) not in algs:
        raise InvalidRegistration(f"key {jwk.get('kid', '')!r} is usable with neither RS384 nor ES384 "
                                  "(an RSA key, or an EC key on P-384)")
    try:
        key = PyJWK(jwk, algs[0]).key
    except PyJWTError as exc:
        raise InvalidRegistration(f"key {jwk.get('kid', '')!r} is not a valid JWK: {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise InvalidRegistration(f"key {jwk.get('kid', '')!r} is an RSA key of {key.key_size} bits (at least 2048)")
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise InvalidRegistration(f"key {jwk.get('kid', '')!r} is not a public key")


def parse_jwks(text: str) -> str:
    """The JWKS document ``text``, checked and re-serialised compactly; InvalidRegistration if unusable."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidRegistration(f"the JWKS is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise InvalidRegistration('a JWKS is a JSON object {"keys": [...]} with at least one key')
    for jwk in doc["keys"]:
        _check_key(jwk)
    return json.dumps({"keys": doc["keys"]}, separators=(",", ":"), sort_keys=True)


def _check_scopes(wanted: Iterable[str]) -> tuple[str, ...]:
    found, bad = scopes.parse_many(wanted)
    if bad:
        raise InvalidRegistration(f"not SMART system scopes: {', '.join(bad)}")
    if not found:
        raise InvalidRegistration("a client needs at least one scope")
    return tuple(dict.fromkeys(scopes.render(s) for s in found))


def add_client(conn: Connection, name: str, wanted_scopes: Iterable[str], jwks: str | None) -> Registered:
    """Register ``name``: with ``jwks`` (a JWKS document) for private_key_jwt, else with a new secret."""
    if not _NAME.match(name):
        raise InvalidRegistration("a client name is 1-64 letters, digits, '_', '.', '-' (first a letter or digit)")
    if find_client(conn, name=name) is not None:
        raise InvalidRegistration(f"a client named {name!r} exists already")
    granted = _check_scopes(wanted_scopes)
    secret = None if jwks is not None else new_secret()
    client = Client(
        client_id=secrets.token_urlsafe(18), name=name,
        auth_method="private_key_jwt" if jwks is not None else "client_secret", scopes=granted,
        jwks=parse_jwks(jwks) if jwks is not None else "",
        secret_hash=hash_secret(secret) if secret is not None else "",
    )
    conn.execute(insert(auth_clients).values(
        client_id=client.client_id, name=name, auth_method=client.auth_method, scopes=" ".join(granted),
        jwks=client.jwks, secret_hash=client.secret_hash, created_at=datetime.now(UTC)))
    return Registered(client, secret)


def _client(row: Any) -> Client:
    return Client(row.client_id, row.name, row.auth_method, tuple(row.scopes.split()), row.jwks, row.secret_hash)


def find_client(conn: Connection, client_id: str | None = None, name: str | None = None) -> Client | None:
    """The client with this ``client_id`` (or ``name``); None if there is none."""
    column = auth_clients.c.client_id if client_id is not None else auth_clients.c.name
    row = conn.execute(select(auth_clients).where(column == (client_id if client_id is not None else name))).first()
    return None if row is None else _client(row)


def list_clients(conn: Connection) -> list[Client]:
    """Every registered client, by name."""
    return [_client(r) for r in conn.execute(select(auth_clients).order_by(auth_clients.c.name))]


def remove_client(conn: Connection, name: str) -> Client | None:
    """Delete the client named ``name``; the removed client, or None if there was none."""
    client = find_client(conn, name=name)
    if client is not None:
        conn.execute(delete(auth_clients).where(auth_clients.c.client_id == client.client_id))
    return client
