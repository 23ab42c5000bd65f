"""Client assertions (SMART Backend Services): signature, algorithm, claims and lifetime checks.

Assertions are built with joserfc (tests/auth/keys.py); the server verifies with PyJWT.
"""

from __future__ import annotations

import time

import pytest

from engine.auth.assertion import claimed_client_id, verify_assertion
from engine.auth.clients import Client
from engine.auth.oauth import OAuthError
from tests.auth.keys import ClientKey, assertion, ec_key, hs256_assertion, jwks, rsa_key, unsigned_assertion

AUD = "https://radbridge.example.org/auth/token"
CID = "client-123"


@pytest.fixture(scope="module")
def rsa() -> ClientKey:
    return rsa_key()


@pytest.fixture(scope="module")
def ec() -> ClientKey:
    return ec_key()


def _client(*keys: ClientKey) -> Client:
    return Client(CID, "ehr", "private_key_jwt", ("system/*.rs",), jwks(*keys))


def _verify(token: str, client: Client, aud: str = AUD, max_lifetime: float = 300, leeway: float = 0):
    return verify_assertion(token, client, aud, time.time, max_lifetime, leeway)


def _refused(token: str, client: Client, match: str, **kw: float) -> None:
    with pytest.raises(OAuthError, match=match) as caught:
        _verify(token, client, **kw)
    assert caught.value.error == "invalid_client"


@pytest.mark.parametrize("which", ["rsa", "ec"])
def test_rs384_and_es384_assertions_verify(which: str, request: pytest.FixtureRequest) -> None:
    key: ClientKey = request.getfixturevalue(which)
    token = assertion(key, CID, AUD, claims={"jti": "abc-1"})

    verified = _verify(token, _client(key))

    assert verified.jti == "abc-1"
    assert verified.exp > time.time()


def test_an_assertion_without_kid_verifies_with_whichever_registered_key_fits(rsa: ClientKey, ec: ClientKey) -> None:
    import jwt

    token = assertion(rsa, CID, AUD, header={"kid": None})

    assert "kid" not in jwt.get_unverified_header(token)
    assert _verify(token, _client(rsa_key("rsa-2"), ec, rsa)).jti


def test_a_signature_by_another_key_is_refused(rsa: ClientKey) -> None:
    stranger = rsa_key("rsa-1")  # same kid, different key
    _refused(assertion(stranger, CID, AUD), _client(rsa), "signature does not verify")


def test_an_unknown_kid_is_refused(rsa: ClientKey) -> None:
    _refused(assertion(rsa_key("nobody"), CID, AUD), _client(rsa), "no registered key")


def test_an_expired_assertion_is_refused(rsa: ClientKey) -> None:
    token = assertion(rsa, CID, AUD, claims={"exp": int(time.time()) - 60, "iat": int(time.time()) - 120})
    _refused(token, _client(rsa), "expired")


def test_clock_skew_within_the_leeway_is_tolerated(rsa: ClientKey) -> None:
    token = assertion(rsa, CID, AUD, claims={"exp": int(time.time()) - 10, "iat": int(time.time()) - 100})
    assert _verify(token, _client(rsa), leeway=30).jti


def test_an_exp_more_than_five_minutes_ahead_is_refused(rsa: ClientKey) -> None:
    _refused(assertion(rsa, CID, AUD, lifetime=3600), _client(rsa), "more than 300 s ahead")
    assert _verify(assertion(rsa, CID, AUD, lifetime=290), _client(rsa)).jti


@pytest.mark.parametrize(("claims", "match"), [
    ({"aud": "https://other.example.org/auth/token"}, "aud is not this token endpoint"),
    ({"aud": None}, "lacks a required claim"),
    ({"iss": "someone-else"}, "iss is not the client id"),
    ({"sub": "someone-else"}, "sub is not the client id"),
    ({"sub": None}, "lacks a required claim"),
    ({"jti": None}, "lacks a required claim"),
    ({"jti": ""}, "jti must be a string"),
    ({"jti": "x" * 256}, "jti must be a string"),
    ({"exp": None}, "lacks a required claim"),
    ({"nbf": int(time.time()) + 24 * 3600}, "not valid yet"),  # set at collection: far enough ahead
])
def test_wrong_or_missing_claims_are_refused(rsa: ClientKey, claims: dict[str, object], match: str) -> None:
    _refused(assertion(rsa, CID, AUD, claims=claims), _client(rsa), match)


def test_aud_may_be_a_list_naming_the_token_endpoint(ec: ClientKey) -> None:
    assert _verify(assertion(ec, CID, AUD, claims={"aud": ["https://x.example/", AUD]}), _client(ec)).jti


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS384"])
def test_other_rsa_algorithms_are_refused(rsa: ClientKey, alg: str) -> None:
    _refused(assertion(rsa, CID, AUD, alg=alg), _client(rsa), f"alg '{alg}' is not accepted")


def test_es256_with_a_p256_key_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec as ec_curves

    p256 = ec_key("p256", ec_curves.SECP256R1())
    _refused(assertion(p256, CID, AUD, alg="ES256"), _client(ec_key()), "alg 'ES256' is not accepted")


def test_hs256_signed_with_the_public_key_text_is_refused(rsa: ClientKey) -> None:
    # the classic confusion attack: MAC with the public key the server knows
    _refused(hs256_assertion(jwks(rsa), CID, AUD), _client(rsa), "alg 'HS256' is not accepted")


def test_alg_none_is_refused(rsa: ClientKey) -> None:
    _refused(unsigned_assertion(CID, AUD), _client(rsa), "alg 'none' is not accepted")


def test_an_assertion_signed_with_the_right_alg_but_the_wrong_key_type_finds_no_key(ec: ClientKey) -> None:
    _refused(assertion(rsa_key(), CID, AUD), _client(ec), "no registered key")


def test_a_secret_client_cannot_use_an_assertion(rsa: ClientKey) -> None:
    secret_client = Client(CID, "ehr", "client_secret", ("system/*.rs",), "", "sha256$00$00")
    _refused(assertion(rsa, CID, AUD), secret_client, "client secret")


@pytest.mark.parametrize("junk", ["", "abc", "a.b.c", "eyJhbGciOiJSUzM4NCJ9.e30.", "...."])
def test_junk_is_not_a_jwt(junk: str) -> None:
    with pytest.raises(OAuthError, match=r"not a JWT|no iss"):
        claimed_client_id(junk)
