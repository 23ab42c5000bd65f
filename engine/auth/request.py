"""A token request, parsed from its form body and Authorization header (pure).

RFC 6749 4.4 (client credentials grant) with client authentication by one of

* ``private_key_jwt`` (RFC 7523 2.2, SMART Backend Services): ``client_assertion_type``
  = ``urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and ``client_assertion``;
* ``client_secret_basic`` (RFC 6749 2.3.1): ``Authorization: Basic`` with the
  form-urlencoded id and secret;
* ``client_secret_post``: ``client_id`` and ``client_secret`` in the body.

A request that uses more than one method, repeats a parameter, or is not
``application/x-www-form-urlencoded`` is refused (``invalid_request``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote_plus

from engine.auth.assertion import claimed_client_id
from engine.auth.oauth import OAuthError

__all__ = ["ASSERTION_TYPE", "MAX_BODY_BYTES", "AssertionCredentials", "SecretCredentials", "TokenRequest",
           "parse_token_request"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: A token request is a few hundred bytes (an RS384 assertion with a 4096-bit key ~1 KB).
MAX_BODY_BYTES = 16 * 1024
_MAX_FIELDS = 16


@dataclass(frozen=True, slots=True)
class AssertionCredentials:
    """``private_key_jwt``: the assertion and the client id it claims (not yet verified)."""

    client_id: str
    assertion: str
    method: Literal["private_key_jwt"] = "private_key_jwt"


@dataclass(frozen=True, slots=True)
class SecretCredentials:
    """``client_secret_basic`` or ``client_secret_post``: id and secret (not yet verified)."""

    client_id: str
    secret: str
    method: Literal["client_secret_basic", "client_secret_post"]

    def __repr__(self) -> str:  # never print a secret, even in a traceback's locals
        return f"SecretCredentials(client_id={self.client_id!r}, secret=<hidden>, method={self.method!r})"


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A parsed token request; ``scope`` is None when the client sent none."""

    grant_type: str
    scope: str | None
    credentials: AssertionCredentials | SecretCredentials


def _form(body: bytes, content_type: str | None) -> dict[str, str]:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                          max_num_fields=_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", "the body is not a valid form") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"parameter {name[:32]!r} is repeated")
        form[name] = value
    return form


def _basic(authorization: str) -> SecretCredentials:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError("invalid_client", "the Authorization header must be Basic (client_secret_basic)")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError as exc:  # binascii.Error, UnicodeDecodeError, non-ASCII text
        raise OAuthError("invalid_client", "the Basic credentials are not base64 of id:secret") from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise OAuthError("invalid_client", "the Basic credentials are not base64 of id:secret")
    return SecretCredentials(unquote_plus(client_id), unquote_plus(secret), "client_secret_basic")


def _credentials(form: dict[str, str], authorization: str | None) -> AssertionCredentials | SecretCredentials:
    used = [m for m, present in (("basic", authorization is not None), ("post", "client_secret" in form),
                                 ("jwt", "client_assertion" in form or "client_assertion_type" in form)) if present]
    if len(used) > 1:
        raise OAuthError("invalid_request", "use exactly one client authentication method")
    if not used:
        raise OAuthError("invalid_client", "no client authentication (private_key_jwt, client_secret_basic/post)")
    if used[0] == "basic":
        creds = _basic(authorization or "")
    elif used[0] == "post":
        creds = SecretCredentials(form.get("client_id", ""), form["client_secret"], "client_secret_post")
    else:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_client", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion", "")
        return AssertionCredentials(claimed_client_id(assertion), assertion)
    if not creds.client_id:
        raise OAuthError("invalid_client", "no client_id")
    return creds


def parse_token_request(body: bytes, content_type: str | None, authorization: str | None) -> TokenRequest:
    """The token request in ``body``; OAuthError if it is malformed or names no client authentication."""
    form = _form(body, content_type)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required (client_credentials)")
    creds = _credentials(form, authorization)
    if "client_id" in form and form["client_id"] != creds.client_id:
        raise OAuthError("invalid_client", "client_id does not match the client's credentials")
    return TokenRequest(grant_type, form.get("scope"), creds)
