"""The token endpoint and SMART configuration on a real uvicorn server, driven by httpx and authlib.

authlib's OAuth2 client (private_key_jwt with RS384/ES384, client_secret_basic/post) is
the independent client; hand-built requests (httpx, joserfc assertions) cover what a
well-behaved client never sends: replays, expired or mis-addressed assertions, HS256
and ``none``, unknown clients, wrong secrets.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from authlib.integrations.httpx_client import OAuth2Client
from authlib.integrations.httpx_client import OAuthError as ClientOAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from sqlalchemy import select

from engine.config.models import AuthConfig
from engine.store.database import Database
from engine.store.schema import audit_events
from tests.auth.keys import (
    ASSERTION_TYPE,
    ClientKey,
    assertion,
    ec_key,
    hs256_assertion,
    jwks,
    rsa_key,
    unsigned_assertion,
)
from tests.auth.server import AuthServer, serving
from tests.conftest import migrated


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """authlib's private_key_jwt with exp 4 minutes ahead (its default of one hour breaks SMART's 5-minute cap)."""

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id, token_endpoint=token_endpoint,
                                    alg=self.alg, header=self.headers, expires_in=240)


@pytest.fixture(scope="module")
def keys() -> dict[str, ClientKey]:
    return {"RS384": rsa_key(), "ES384": ec_key()}


@pytest.fixture
def db(tmp_path) -> Iterator[Database]:
    yield from migrated(f"sqlite:///{tmp_path / 'rb.db'}")


@pytest.fixture
def server(db: Database) -> Iterator[AuthServer]:
    with serving(db, AuthConfig()) as running:
        yield running


def _token(server: AuthServer, data: dict[str, str], auth: tuple[str, str] | None = None) -> httpx.Response:
    return httpx.post(server.token_url, data=data, auth=auth, timeout=10)


def _jwt_form(token: str, scope: str = "system/ImagingStudy.rs") -> dict[str, str]:
    return {"grant_type": "client_credentials", "scope": scope, "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": token}


def _get(server: AuthServer, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{server.base}{path}", headers=headers, timeout=10)


def _audit(db: Database) -> list[tuple[str, str, str, dict[str, Any]]]:
    rows = db.read(lambda c: c.execute(select(audit_events).order_by(audit_events.c.id)).all())
    return [(r.actor, r.action, r.object_id, json.loads(r.detail)) for r in rows]


# ------------------------------------------------------------------ discovery


def test_the_smart_configuration_is_public_and_names_the_token_endpoint(server: AuthServer) -> None:
    response = httpx.get(f"{server.base}/fhir/.well-known/smart-configuration", timeout=10)

    assert response.status_code == 200
    doc = response.json()
    assert doc["token_endpoint"] == server.token_url
    assert doc["token_endpoint_auth_methods_supported"] == ["private_key_jwt", "client_secret_basic",
                                                             "client_secret_post"]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert doc["grant_types_supported"] == ["client_credentials"]
    assert {"system/ImagingStudy.rs", "system/ImagingStudy.read", "system/*.rs"} <= set(doc["scopes_supported"])
    assert {"client-confidential-asymmetric", "client-confidential-symmetric"} <= set(doc["capabilities"])


def test_a_configured_token_url_is_what_discovery_names_and_assertions_must_address(
        db: Database, keys: dict[str, ClientKey]) -> None:
    public = "https://radbridge.example.org/api/auth/token"
    with serving(db, AuthConfig(token_url=public)) as server:
        client_id = server.register("ehr", ["system/*.rs"], jwks(keys["ES384"])).client.client_id
        doc = httpx.get(f"{server.base}/fhir/.well-known/smart-configuration", timeout=10).json()
        to_local = _token(server, _jwt_form(assertion(keys["ES384"], client_id, server.token_url)))
        to_public = _token(server, _jwt_form(assertion(keys["ES384"], client_id, public)))

    assert doc["token_endpoint"] == public
    assert to_local.status_code == 401 and "aud" in to_local.json()["error_description"]
    assert to_public.status_code == 200


# ------------------------------------------------------------------ issuing with an independent client


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_authlib_private_key_jwt_gets_a_token_that_opens_the_api(server: AuthServer, keys: dict[str, ClientKey],
                                                                 alg: str) -> None:
    key = keys[alg]
    client_id = server.register("ehr", ["system/ImagingStudy.rs", "system/Patient.read"], jwks(key)).client.client_id
    with OAuth2Client(client_id, key.jwk, token_endpoint_auth_method=ShortLivedPrivateKeyJWT(
            server.token_url, headers={"kid": key.kid}, alg=alg)) as client:
        token = client.fetch_token(server.token_url, grant_type="client_credentials",
                                   scope="system/ImagingStudy.rs system/Observation.rs")
        study = client.get(f"{server.base}/fhir/ImagingStudy")

    assert token["token_type"] == "bearer" and token["expires_in"] == 300
    assert token["scope"] == "system/ImagingStudy.rs"  # granted ∩ requested: no Observation, no Patient
    assert study.status_code == 200 and study.json() == {"client_id": client_id,
                                                         "scopes": ["system/ImagingStudy.rs"]}
    assert _get(server, "/fhir/Patient/p1", token["access_token"]).status_code == 403


def test_authlib_default_assertion_living_an_hour_is_refused(server: AuthServer, keys: dict[str, ClientKey]) -> None:
    key = keys["ES384"]
    client_id = server.register("ehr", ["system/*.rs"], jwks(key)).client.client_id
    with OAuth2Client(client_id, key.jwk, token_endpoint_auth_method=PrivateKeyJWT(server.token_url, alg="ES384")
                      ) as client, pytest.raises(ClientOAuthError) as caught:
        client.fetch_token(server.token_url, grant_type="client_credentials", scope="system/*.rs")

    assert caught.value.error == "invalid_client"
    assert "more than 300 s ahead" in str(caught.value.description)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_client_secret_gets_a_token(server: AuthServer, method: str) -> None:
    registered = server.register("ris", ["system/*.read"])
    with OAuth2Client(registered.client.client_id, registered.secret, token_endpoint_auth_method=method) as client:
        token = client.fetch_token(server.token_url, grant_type="client_credentials", scope="system/*.read")
        response = client.get(f"{server.base}/fhir/DiagnosticReport/r1")

    assert token["scope"] == "system/*.read"
    assert response.status_code == 200


def test_a_token_response_is_never_cached(server: AuthServer) -> None:
    registered = server.register("ris", ["system/*.rs"])

    response = _token(server, {"grant_type": "client_credentials", "scope": "system/*.rs"},
                      auth=(registered.client.client_id, registered.secret or ""))

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"
    assert response.headers["content-type"] == "application/json"


# ------------------------------------------------------------------ refusing assertions


def test_a_replayed_assertion_is_refused(server: AuthServer, keys: dict[str, ClientKey]) -> None:
    client_id = server.register("ehr", ["system/*.rs"], jwks(keys["RS384"])).client.client_id
    form = _jwt_form(assertion(keys["RS384"], client_id, server.token_url))

    first, second = _token(server, form), _token(server, form)

    assert first.status_code == 200
    assert second.status_code == 401
    assert second.json() == {"error": "invalid_client",
                             "error_description": "the assertion's jti was used before (replay)"}
    actions = [(a, o, d.get("error"), d.get("reason")) for _, a, o, d in _audit(server.db)]
    assert actions == [("auth.token", client_id, None, None),
                       ("auth.token_refused", client_id, "invalid_client",
                        "the assertion's jti was used before (replay)")]


def test_the_replay_is_refused_by_a_restarted_server_on_the_same_database(
        db: Database, keys: dict[str, ClientKey]) -> None:
    with serving(db, AuthConfig(token_url="https://rb.example/auth/token")) as server:
        client_id = server.register("ehr", ["system/*.rs"], jwks(keys["ES384"])).client.client_id
        form = _jwt_form(assertion(keys["ES384"], client_id, "https://rb.example/auth/token"))
        assert _token(server, form).status_code == 200
    with serving(db, AuthConfig(token_url="https://rb.example/auth/token")) as server:
        assert _token(server, form).json()["error_description"].endswith("(replay)")


@pytest.mark.parametrize(("case", "reason"), [
    ("expired", "expired"),
    ("too_long", "more than 300 s ahead"),
    ("wrong_aud", "aud is not this token endpoint"),
    ("wrong_iss", "unknown client"),
    ("wrong_sub", "sub is not the client id"),
    ("hs256", "alg 'HS256' is not accepted"),
    ("none", "alg 'none' is not accepted"),
    ("rs256", "alg 'RS256' is not accepted"),
    ("other_key", "signature does not verify"),
])
def test_bad_assertions_are_refused_as_invalid_client(server: AuthServer, keys: dict[str, ClientKey],
                                                      case: str, reason: str) -> None:
    key = keys["RS384"]
    client_id = server.register("ehr", ["system/*.rs"], jwks(key)).client.client_id
    now, url = int(time.time()), server.token_url
    token = {
        "expired": lambda: assertion(key, client_id, url, claims={"exp": now - 120, "iat": now - 200}),
        "too_long": lambda: assertion(key, client_id, url, lifetime=3600),
        "wrong_aud": lambda: assertion(key, client_id, "https://elsewhere.example/auth/token"),
        "wrong_iss": lambda: assertion(key, client_id, url, claims={"iss": "intruder"}),
        "wrong_sub": lambda: assertion(key, client_id, url, claims={"sub": "intruder"}),
        "hs256": lambda: hs256_assertion(jwks(key), client_id, url),
        "none": lambda: unsigned_assertion(client_id, url),
        "rs256": lambda: assertion(key, client_id, url, alg="RS256"),
        "other_key": lambda: assertion(rsa_key(key.kid), client_id, url),
    }[case]()

    response = _token(server, _jwt_form(token))

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert reason in response.json()["error_description"]
    assert "www-authenticate" not in response.headers  # only a client that tried Basic gets the challenge
    (_, action, _, detail) = _audit(server.db)[-1]
    assert action == "auth.token_refused" and reason in detail["reason"] and detail["ip"] == "127.0.0.1"


def test_a_secret_client_cannot_use_an_assertion_nor_a_jwks_client_a_secret(
        server: AuthServer, keys: dict[str, ClientKey]) -> None:
    secret_client = server.register("ris", ["system/*.rs"]).client.client_id
    jwks_client = server.register("ehr", ["system/*.rs"], jwks(keys["ES384"])).client.client_id

    by_assertion = _token(server, _jwt_form(assertion(keys["ES384"], secret_client, server.token_url)))
    by_secret = _token(server, {"grant_type": "client_credentials", "scope": "system/*.rs"}, auth=(jwks_client, "x"))

    assert by_assertion.status_code == by_secret.status_code == 401


# ------------------------------------------------------------------ refusing secrets and requests


def test_a_wrong_secret_is_401_with_a_basic_challenge(server: AuthServer) -> None:
    client_id = server.register("ris", ["system/*.rs"]).client.client_id

    response = _token(server, {"grant_type": "client_credentials", "scope": "system/*.rs"}, auth=(client_id, "nope"))

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"] == 'Basic realm="radbridge"'


def test_an_unknown_client_is_401(server: AuthServer) -> None:
    response = _token(server, {"grant_type": "client_credentials", "scope": "system/*.rs", "client_id": "ghost",
                               "client_secret": "x"})

    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client", "error_description": "unknown client"}


@pytest.mark.parametrize(("form", "status", "error"), [
    ({"grant_type": "authorization_code"}, 400, "unsupported_grant_type"),
    ({"grant_type": "password"}, 400, "unsupported_grant_type"),
    ({"grant_type": "client_credentials", "scope": "system/Patient.rs"}, 400, "invalid_scope"),
    ({"grant_type": "client_credentials", "scope": "patient/*.read openid"}, 400, "invalid_scope"),
    ({"grant_type": "client_credentials"}, 400, "invalid_scope"),
    ({"scope": "system/*.rs"}, 400, "invalid_request"),
])
def test_refusals_follow_rfc_6749(server: AuthServer, form: dict[str, str], status: int, error: str) -> None:
    registered = server.register("ris", ["system/ImagingStudy.rs"])

    response = _token(server, form, auth=(registered.client.client_id, registered.secret or ""))

    assert response.status_code == status
    assert response.json()["error"] == error and response.json()["error_description"]


def test_a_json_body_or_an_oversized_body_is_invalid_request(server: AuthServer) -> None:
    as_json = httpx.post(server.token_url, json={"grant_type": "client_credentials"}, timeout=10)
    huge = httpx.post(server.token_url, content=b"a=" + b"x" * 100_000,
                      headers={"content-type": "application/x-www-form-urlencoded"}, timeout=10)

    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")
    assert (huge.status_code, huge.json()["error"]) == (400, "invalid_request")


def test_get_on_the_token_endpoint_is_not_allowed(server: AuthServer) -> None:
    assert httpx.get(server.token_url, timeout=10).status_code == 405


# ------------------------------------------------------------------ the API with tokens


def _secret_token(server: AuthServer, registered: list[str], requested: str) -> str:
    client = server.register(f"c{abs(hash((tuple(registered), requested))) % 10**8}", registered)
    response = _token(server, {"grant_type": "client_credentials", "scope": requested},
                      auth=(client.client.client_id, client.secret or ""))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.mark.parametrize("path", ["/fhir/ImagingStudy", "/fhir/ImagingStudy/1", "/fhir/Patient",
                                  "/fhir/ServiceRequest/1", "/fhir/DiagnosticReport", "/fhir/Endpoint/e"])
def test_no_token_is_401_with_a_bearer_challenge(server: AuthServer, path: str) -> None:
    response = _get(server, path, None)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="radbridge"'  # no credentials, no error: RFC 6750 3.1
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("registered", "requested", "path", "status"), [
    (["system/ImagingStudy.rs"], "system/ImagingStudy.rs", "/fhir/ImagingStudy", 200),
    (["system/ImagingStudy.rs"], "system/ImagingStudy.rs", "/fhir/ImagingStudy/1", 200),
    (["system/ImagingStudy.rs"], "system/ImagingStudy.rs", "/fhir/Patient", 403),
    (["system/ImagingStudy.rs"], "system/ImagingStudy.rs", "/fhir/ServiceRequest/1", 403),
    (["system/ImagingStudy.rs"], "system/ImagingStudy.r", "/fhir/ImagingStudy", 403),
    (["system/ImagingStudy.rs"], "system/ImagingStudy.s", "/fhir/ImagingStudy/1", 403),
    (["system/ImagingStudy.r"], "system/ImagingStudy.rs", "/fhir/ImagingStudy", 403),
    (["system/ImagingStudy.read"], "system/ImagingStudy.read", "/fhir/ImagingStudy", 200),
    (["system/*.read"], "system/ImagingStudy.rs", "/fhir/DiagnosticReport/1", 403),
    (["system/*.read"], "system/*.read", "/fhir/DiagnosticReport/1", 200),
    (["system/*.rs"], "system/Patient.rs system/Endpoint.r", "/fhir/Endpoint", 403),
    (["system/*.rs"], "system/Patient.rs system/Endpoint.r", "/fhir/Endpoint/1", 200),
    (["system/*.cruds"], "system/*.cud", "/fhir/Patient/1", 403),
])
def test_scopes_decide_per_resource_type_and_interaction(server: AuthServer, registered: list[str],
                                                         requested: str, path: str, status: int) -> None:
    response = _get(server, path, _secret_token(server, registered, requested))

    assert response.status_code == status
    if status == 403:
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_an_expired_access_token_is_401(db: Database) -> None:
    # A lifetime of a few seconds: on a loaded machine the first request alone took over 1 s.
    with serving(db, AuthConfig(token_lifetime_seconds=4, clock_skew_seconds=0)) as server:
        token = _secret_token(server, ["system/*.rs"], "system/*.rs")
        issued = time.monotonic()
        assert _get(server, "/fhir/ImagingStudy", token).status_code == 200
        time.sleep(max(0.0, issued + 5.1 - time.monotonic()))
        response = _get(server, "/fhir/ImagingStudy", token)

    assert response.status_code == 401
    assert "expired" in response.headers["www-authenticate"]


def test_a_token_of_another_engine_key_is_401(db: Database) -> None:
    with serving(db, AuthConfig(), key=b"a" * 32) as first:
        token = _secret_token(first, ["system/*.rs"], "system/*.rs")
    with serving(db, AuthConfig(), key=b"b" * 32) as second:
        assert _get(second, "/fhir/ImagingStudy", token).status_code == 401
    with serving(db, AuthConfig(), key=b"a" * 32) as again:  # same key, another process: accepted
        assert _get(again, "/fhir/ImagingStudy", token).status_code == 200


# ------------------------------------------------------------------ limits, audit, secrecy


def test_repeated_failures_block_that_client_from_that_address(db: Database) -> None:
    with serving(db, AuthConfig(max_failures_per_client_ip=3)) as server:
        registered = server.register("ris", ["system/*.rs"])
        client_id, secret = registered.client.client_id, registered.secret or ""
        form = {"grant_type": "client_credentials", "scope": "system/*.rs"}
        codes = [_token(server, form, auth=(client_id, "wrong")).status_code for _ in range(3)]
        blocked = _token(server, form, auth=(client_id, secret))
        other = server.register("other", ["system/*.rs"])
        unaffected = _token(server, form, auth=(other.client.client_id, other.secret or ""))

    assert codes == [401, 401, 401]
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    assert unaffected.status_code == 200
    assert len([e for e in _audit(db) if e[1] == "auth.token_refused"]) == 3  # blocked requests add no rows


def test_repeated_failures_from_one_address_block_it_whatever_the_client(db: Database) -> None:
    with serving(db, AuthConfig(max_failures_per_ip=4)) as server:
        form = {"grant_type": "client_credentials", "scope": "system/*.rs"}
        codes = [_token(server, form, auth=(f"ghost-{n}", "x")).status_code for n in range(5)]
        malformed = httpx.post(server.token_url, content=b"junk", timeout=10)

    assert codes == [401, 401, 401, 401, 429]
    assert malformed.status_code == 429  # refused before its body is even read


def test_issued_and_refused_tokens_are_audited_without_secrets_or_tokens(
        server: AuthServer, keys: dict[str, ClientKey], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registered = server.register("ris", ["system/*.rs"])
    client_id, secret = registered.client.client_id, registered.secret or ""
    jwks_client = server.register("ehr", ["system/*.rs"], jwks(keys["ES384"])).client.client_id
    signed = assertion(keys["ES384"], jwks_client, server.token_url)
    ok = _token(server, {"grant_type": "client_credentials", "scope": "system/*.rs"}, auth=(client_id, secret))
    _token(server, {"grant_type": "client_credentials", "scope": "system/*.rs"}, auth=(client_id, secret + "x"))
    by_jwt = _token(server, _jwt_form(signed, "system/*.rs"))
    access_tokens = [ok.json()["access_token"], by_jwt.json()["access_token"]]

    events = _audit(server.db)
    assert [(actor, action) for actor, action, _, _ in events] == [
        (client_id, "auth.token"), (client_id, "auth.token_refused"), (jwks_client, "auth.token")]
    issued = events[0][3]
    assert issued["ip"] == "127.0.0.1" and issued["client_name"] == "ris" and issued["scope"] == "system/*.rs"
    assert events[1][3]["reason"] == "client authentication failed"
    stored = json.dumps(events) + caplog.text
    for secret_text in [secret, secret + "x", signed, *access_tokens, signed.split(".")[2]]:
        assert secret_text not in stored


# ------------------------------------------------------------------ development mode


def test_development_mode_serves_requests_without_a_token_and_still_checks_tokens_sent(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), serving(db, AuthConfig(unauthenticated_development_mode=True)) as server:
        anonymous = _get(server, "/fhir/ImagingStudy", None)
        narrow = _get(server, "/fhir/Patient", _secret_token(server, ["system/ImagingStudy.rs"], "system/*.rs"))
        forged = _get(server, "/fhir/Patient", "not-a-token")

    assert anonymous.status_code == 200 and anonymous.json()["client_id"] == "development"
    assert narrow.status_code == 403 and forged.status_code == 401
    assert "unauthenticated_development_mode is on" in caplog.text


def test_the_shipped_configuration_requires_tokens() -> None:
    from pathlib import Path

    from engine.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "config")

    assert config.engine.auth.unauthenticated_development_mode is False


def test_no_token_is_issued_when_the_store_cannot_record_it(server: AuthServer, keys: dict[str, ClientKey]) -> None:
    from sqlalchemy import text

    client_id = server.register("ehr", ["system/*.rs"], jwks(keys["ES384"])).client.client_id
    server.db.writer.call(lambda c: c.execute(text("DROP TABLE auth_used_jtis")))

    response = _token(server, _jwt_form(assertion(keys["ES384"], client_id, server.token_url)))

    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable" and "access_token" not in response.text
    assert response.headers["retry-after"] == "5"


def test_the_failure_counters_hold_a_claimed_client_id_cut_short(server: AuthServer) -> None:
    response = _token(server, {"grant_type": "client_credentials", "client_id": "x" * 10_000, "client_secret": "s"})

    assert response.status_code == 401
    (key,) = server.auth.service.per_client_ip._keys
    assert len(key) < 200


def test_two_engines_on_one_database_refuse_each_others_replays_and_accept_each_others_tokens(
        db_url: str, keys: dict[str, ClientKey]) -> None:
    url = "https://rb.example/auth/token"  # both behind one load balancer
    first_db, second_db = Database(db_url), Database(db_url)
    first_db.migrate()
    try:
        with serving(first_db, AuthConfig(token_url=url)) as first, \
                serving(second_db, AuthConfig(token_url=url)) as second:
            client_id = first.register("ehr", ["system/*.rs"], jwks(keys["RS384"])).client.client_id
            form = _jwt_form(assertion(keys["RS384"], client_id, url))
            issued = _token(first, form)
            replayed = _token(second, form)
            study = _get(second, "/fhir/ImagingStudy", issued.json()["access_token"])
    finally:
        first_db.close()
        second_db.close()

    assert issued.status_code == 200
    assert replayed.status_code == 401 and replayed.json()["error_description"].endswith("(replay)")
    assert study.status_code == 200


def test_authlibs_httpx_client_loads_without_a_deprecation_warning() -> None:
    """authlib runs its httpx integration on httpx2; the fallback to httpx is deprecated (a warning per run)."""
    # authlib sets its own warnings to "always" when imported, overriding -W error: read what it printed.
    loaded = subprocess.run([sys.executable, "-c", "import authlib.integrations.httpx_client"],
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0 and "DeprecationWarning" not in loaded.stderr, loaded.stderr
