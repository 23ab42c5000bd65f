"""Token requests: form parsing and the choice of client authentication method (RFC 6749 2.3, RFC 7523 2.2)."""

from __future__ import annotations

import base64
from urllib.parse import quote_plus, urlencode

import pytest

from engine.auth.oauth import OAuthError
from engine.auth.request import (
    ASSERTION_TYPE,
    AssertionCredentials,
    SecretCredentials,
    parse_token_request,
)
from tests.auth.keys import assertion, ec_key

FORM = "application/x-www-form-urlencoded"


def _basic(client_id: str, secret: str) -> str:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _refused(error: str, body: bytes, content_type: str | None = FORM, authorization: str | None = None) -> None:
    with pytest.raises(OAuthError) as caught:
        parse_token_request(body, content_type, authorization)
    assert caught.value.error == error, caught.value.description


def test_private_key_jwt_names_the_client_from_the_assertion() -> None:
    token = assertion(ec_key(), "cid-9", "https://x/auth/token")
    body = urlencode({"grant_type": "client_credentials", "scope": "system/*.rs",
                      "client_assertion_type": ASSERTION_TYPE, "client_assertion": token}).encode()

    request = parse_token_request(body, FORM + "; charset=UTF-8", None)

    assert request.grant_type == "client_credentials" and request.scope == "system/*.rs"
    assert request.credentials == AssertionCredentials("cid-9", token)


def test_client_secret_basic_decodes_form_encoded_id_and_secret() -> None:
    body = b"grant_type=client_credentials&scope=system%2FImagingStudy.rs"

    request = parse_token_request(body, FORM, _basic("id:with colon", "s3cr+t/=:x"))

    assert request.credentials == SecretCredentials("id:with colon", "s3cr+t/=:x", "client_secret_basic")
    assert request.scope == "system/ImagingStudy.rs"


def test_client_secret_post_reads_id_and_secret_from_the_body() -> None:
    body = urlencode({"grant_type": "client_credentials", "client_id": "c1", "client_secret": "s"}).encode()

    request = parse_token_request(body, FORM, None)

    assert request.credentials == SecretCredentials("c1", "s", "client_secret_post")
    assert request.scope is None


def test_a_secret_never_shows_in_the_credentials_repr() -> None:
    creds = SecretCredentials("c1", "top-secret-value", "client_secret_post")

    assert "top-secret-value" not in repr(creds)


def test_two_authentication_methods_at_once_are_refused() -> None:
    body = urlencode({"grant_type": "client_credentials", "client_id": "c1", "client_secret": "s"}).encode()
    _refused("invalid_request", body, authorization=_basic("c1", "s"))


def test_no_client_authentication_is_invalid_client() -> None:
    _refused("invalid_client", b"grant_type=client_credentials&client_id=c1")


def test_a_missing_grant_type_is_invalid_request() -> None:
    _refused("invalid_request", b"client_id=c1&client_secret=s")


@pytest.mark.parametrize("content_type", [None, "application/json", "multipart/form-data; boundary=x"])
def test_only_form_encoded_bodies_are_read(content_type: str | None) -> None:
    _refused("invalid_request", b"grant_type=client_credentials&client_id=c1&client_secret=s", content_type)


def test_a_repeated_parameter_is_refused() -> None:
    _refused("invalid_request", b"grant_type=client_credentials&client_id=c1&client_secret=s&scope=a&scope=b")


@pytest.mark.parametrize("body", [b"\xff\xfe", b"grant_type", b"a=1&&b=2",
                                  b"&".join([b"x%d=1" % n for n in range(40)])])
def test_a_malformed_body_is_invalid_request(body: bytes) -> None:
    _refused("invalid_request", body)


def test_a_wrong_assertion_type_is_invalid_client() -> None:
    body = urlencode({"grant_type": "client_credentials", "client_assertion_type": "urn:x",
                      "client_assertion": "a.b.c"}).encode()
    _refused("invalid_client", body)


def test_a_client_id_that_contradicts_the_assertion_is_refused() -> None:
    token = assertion(ec_key(), "cid-9", "https://x/auth/token")
    body = urlencode({"grant_type": "client_credentials", "client_id": "cid-10",
                      "client_assertion_type": ASSERTION_TYPE, "client_assertion": token}).encode()
    _refused("invalid_client", body)


@pytest.mark.parametrize("header", ["Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()])
def test_a_malformed_authorization_header_is_invalid_client(header: str) -> None:
    _refused("invalid_client", b"grant_type=client_credentials", authorization=header)


def test_a_non_ascii_basic_header_is_invalid_client() -> None:
    _refused("invalid_client", b"grant_type=client_credentials", authorization="Basic Zm9v\u00e9YmFy")


def test_an_assertion_whose_alg_is_not_a_string_is_invalid_client() -> None:
    import base64 as b64
    import json

    def part(obj: object) -> str:
        return b64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    token = part({"alg": ["RS384"]}) + "." + part({"iss": "c1", "sub": "c1"}) + ".c2ln"
    from engine.auth.assertion import verify_assertion
    from engine.auth.clients import Client

    with pytest.raises(OAuthError) as caught:
        verify_assertion(token, Client("c1", "n", "private_key_jwt", ("system/*.rs",), '{"keys": []}'),
                         "https://x/auth/token", lambda: 0.0, 300, 0)
    assert caught.value.error == "invalid_client"
