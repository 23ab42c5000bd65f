"""Whatever a caller sends to the token endpoint, the answer is a JSON error, never a 500 or a token."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config.models import AuthConfig
from engine.store.database import Database
from tests.auth.server import AuthServer, serving
from tests.conftest import migrated

_names = st.sampled_from(["grant_type", "scope", "client_id", "client_secret", "client_assertion",
                          "client_assertion_type", "x", "", "grant_type[]"])
_values = st.one_of(
    st.sampled_from(["client_credentials", "system/*.rs", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                     "eyJhbGciOiJSUzM4NCJ9.eyJpc3MiOiJ4In0.c2ln", "a.b.c", "", "%", "%zz", "=", "&"]),
    st.text(max_size=40),
)
_form = st.lists(st.tuples(_names, _values), max_size=8).map(
    lambda pairs: "&".join(f"{n}={v}" for n, v in pairs).encode("utf-8", "surrogatepass"))
_body = st.one_of(_form, st.binary(max_size=200))
_content_type = st.sampled_from([None, "application/x-www-form-urlencoded", "application/json", "text/plain",
                                 "application/x-www-form-urlencoded; charset=latin1"])
_authorization = st.one_of(
    st.none(),
    st.sampled_from([b"Basic ", b"Basic \xe9\xe9", b"Bearer x", b"basic " + base64.b64encode(b"a:b"),
                     b"Basic " + base64.b64encode(b"\xff\xfe:x")]),
    # any bytes HTTP allows in a header value (visible ASCII, space, obs-text)
    st.lists(st.integers(0x20, 0xFF).filter(lambda b: b != 0x7F), max_size=40).map(bytes),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    db_gen = migrated(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'rb.db'}")
    db: Database = next(db_gen)
    # no failure limit in the way: every example must reach the parser
    with serving(db, AuthConfig(max_failures_per_client_ip=10**6, max_failures_per_ip=10**6)) as running:
        running.register("ris", ["system/*.rs"])
        yield running
    db.close()


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_body, content_type=_content_type, authorization=_authorization)
def test_junk_token_requests_get_a_json_oauth_error(server: AuthServer, body: bytes, content_type: str | None,
                                                    authorization: bytes | None) -> None:
    headers: dict[str, str | bytes] = {}
    if content_type is not None:
        headers["content-type"] = content_type
    if authorization is not None:
        headers["authorization"] = authorization.strip()

    response = httpx.post(server.token_url, content=body, headers=headers, timeout=10)  # type: ignore[arg-type]

    assert response.status_code in (400, 401), response.text
    assert set(response.json()) == {"error", "error_description"}
