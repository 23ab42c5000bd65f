"""Client secrets are stored as salted hashes and checked in constant time."""

from __future__ import annotations

from engine.auth.client_secret import hash_secret, new_secret, verify_secret


def test_a_secret_verifies_against_its_own_hash_only() -> None:
    secret = new_secret()
    stored = hash_secret(secret)

    assert verify_secret(secret, stored)
    assert not verify_secret(secret + "x", stored)
    assert not verify_secret(new_secret(), stored)


def test_the_stored_form_holds_no_clear_secret_and_differs_per_salt() -> None:
    secret = new_secret()

    first, second = hash_secret(secret), hash_secret(secret)

    assert secret not in first and first != second
    assert first.startswith("sha256$")


def test_secrets_are_long_and_random() -> None:
    secrets = {new_secret() for _ in range(100)}

    assert len(secrets) == 100 and min(len(s) for s in secrets) >= 43


def test_a_malformed_or_foreign_stored_form_verifies_nothing() -> None:
    for stored in ("", "plain", "sha256$zz$00", "md5$00$00", "sha256$00"):
        assert not verify_secret("anything", stored)
