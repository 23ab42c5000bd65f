"""Access tokens: the engine key (data directory 0600, or the environment) and token verification."""

from __future__ import annotations

import base64
import os
import stat
import time
from pathlib import Path

import pytest

from engine.auth.authorizer import SmartAuthorizer, www_authenticate
from engine.auth.interface import AuthFailure, Principal
from engine.auth.tokens import KEY_ENV, KEY_FILE, TokenSigner, load_key
from engine.errors import ConfigError


def test_the_key_is_created_once_owner_only_in_the_data_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"

    key = load_key(data_dir, environ={})

    path = data_dir / KEY_FILE
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert load_key(data_dir, environ={}) == key
    assert [p.name for p in data_dir.iterdir()] == [KEY_FILE]  # no temporary file left


def test_the_environment_key_wins_over_the_file(tmp_path: Path) -> None:
    wanted = os.urandom(48)

    key = load_key(tmp_path, environ={KEY_ENV: base64.urlsafe_b64encode(wanted).decode().rstrip("=")})

    assert key == wanted
    assert not (tmp_path / KEY_FILE).exists()


@pytest.mark.parametrize("value", ["c2hvcnQ", "!!!not base64!!!"])
def test_a_short_or_malformed_environment_key_is_a_configuration_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=KEY_ENV):
        load_key(tmp_path, environ={KEY_ENV: value})


def test_a_truncated_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"short")

    with pytest.raises(ConfigError, match="at least 32 bytes"):
        load_key(tmp_path, environ={})


def _authorizer(key: bytes = b"k" * 32) -> tuple[TokenSigner, SmartAuthorizer]:
    signer = TokenSigner(key)
    return signer, SmartAuthorizer(signer)


def test_a_token_authenticates_as_its_client_with_its_scopes() -> None:
    signer, auth = _authorizer()
    token, jti = signer.issue("c1", ["system/ImagingStudy.rs", "system/Patient.read"], int(time.time()), 300)

    principal = auth.authenticate(f"Bearer {token}")

    assert principal == Principal("c1", frozenset({"system/ImagingStudy.rs", "system/Patient.read"}), jti)
    assert auth.authenticate(f"bearer   {token}  ").client_id == "c1"  # the scheme is case-insensitive


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "Bearer ", "Basic YTpi", "Token abc"])
def test_a_missing_or_non_bearer_header_is_401(header: str | None) -> None:
    _, auth = _authorizer()

    with pytest.raises(AuthFailure) as caught:
        auth.authenticate(header)

    # No credentials at all: no error code in the challenge (RFC 6750 3.1); a header that is not a token: invalid_token.
    expected = "" if header is None or not header.strip() else "invalid_token"
    assert (caught.value.status, caught.value.error) == (401, expected)


def test_an_expired_token_is_401() -> None:
    signer, auth = _authorizer()
    token, _ = signer.issue("c1", ["system/*.rs"], int(time.time()) - 301, 300)

    with pytest.raises(AuthFailure, match="expired") as caught:
        auth.authenticate(f"Bearer {token}")

    assert caught.value.status == 401


def test_a_token_of_another_key_or_tampered_is_401() -> None:
    other, _ = _authorizer(b"x" * 32)
    signer, auth = _authorizer()
    foreign, _ = other.issue("c1", ["system/*.rs"], int(time.time()), 300)
    good, _ = signer.issue("c1", ["system/ImagingStudy.r"], int(time.time()), 300)
    head, body, mac = good.split(".")
    widened = base64.urlsafe_b64encode(base64.urlsafe_b64decode(body + "==").replace(
        b"ImagingStudy.r", b"*.cruds")).decode().rstrip("=")

    for token in (foreign, f"{head}.{widened}.{mac}", "not-a-jwt", good + "x"):
        with pytest.raises(AuthFailure) as caught:
            auth.authenticate(f"Bearer {token}")
        assert caught.value.status == 401


@pytest.mark.parametrize(("scopes", "resource_type", "interaction"), [
    (["system/ImagingStudy.rs"], "Patient", "read"),
    (["system/ImagingStudy.r"], "ImagingStudy", "search"),
    (["system/ImagingStudy.s"], "ImagingStudy", "read"),
    (["system/Patient.write"], "Patient", "read"),
    ([], "ImagingStudy", "read"),
])
def test_require_refuses_what_the_scopes_do_not_cover_with_403(scopes: list[str], resource_type: str,
                                                               interaction: str) -> None:
    _, auth = _authorizer()

    with pytest.raises(AuthFailure) as caught:
        auth.require(Principal("c1", frozenset(scopes)), resource_type, interaction)  # type: ignore[arg-type]

    assert (caught.value.status, caught.value.error) == (403, "insufficient_scope")
    assert f"system/{resource_type}." in caught.value.description


def test_require_passes_what_the_scopes_cover() -> None:
    _, auth = _authorizer()
    principal = Principal("c1", frozenset({"system/ImagingStudy.rs", "system/*.r"}))

    auth.require(principal, "ImagingStudy", "search")
    auth.require(principal, "DiagnosticReport", "read")


def test_www_authenticate_carries_error_and_description_safely_quoted() -> None:
    header = www_authenticate(AuthFailure(403, "insufficient_scope", 'needs "system/X.rs"\r\nInjected: yes'))

    assert header == ('Bearer realm="radbridge", error="insufficient_scope", '
                      'error_description="needs system/X.rsInjected: yes"')
