"""The client registry: JWKS checks, secrets stored hashed, add/list/remove; used jtis kept durably."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from engine.auth.client_secret import verify_secret
from engine.auth.clients import InvalidRegistration, add_client, find_client, list_clients, parse_jwks, remove_client
from engine.auth.replay import use_jti
from engine.auth.tables import auth_clients, auth_used_jtis
from engine.store.database import Database
from tests.auth.keys import ec_key, jwks, rsa_key
from tests.conftest import migrated


@pytest.fixture(scope="module")
def keys() -> str:
    return jwks(rsa_key(), ec_key())


def test_a_jwks_with_rsa_and_p384_keys_is_accepted(keys: str) -> None:
    assert [k["kid"] for k in json.loads(parse_jwks(keys))["keys"]] == ["rsa-1", "ec-1"]


def test_a_private_key_is_refused_so_it_is_never_stored() -> None:
    private = json.dumps({"keys": [rsa_key().jwk.as_dict(private=True)]})

    with pytest.raises(InvalidRegistration, match="private key material"):
        parse_jwks(private)


@pytest.mark.parametrize(("doc", "match"), [
    ("not json", "not JSON"),
    ('{"keys": []}', "at least one key"),
    ('{"kty": "RSA"}', "at least one key"),
    ('{"keys": ["x"]}', "JSON object"),
    ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "private key material"),
    ('{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}', "not a valid JWK"),
    ('{"keys": [{"kty": "RSA", "e": "AQAB"}]}', "not a valid JWK"),
])
def test_unusable_jwks_documents_are_refused(doc: str, match: str) -> None:
    with pytest.raises(InvalidRegistration, match=match):
        parse_jwks(doc)


def test_keys_for_other_algorithms_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(InvalidRegistration, match="neither RS384 nor ES384"):
        parse_jwks(jwks(ec_key("p256", ec.SECP256R1())))
    rsa_for_ps256 = json.loads(jwks(rsa_key()))
    rsa_for_ps256["keys"][0]["alg"] = "PS256"
    with pytest.raises(InvalidRegistration, match="neither RS384 nor ES384"):
        parse_jwks(json.dumps(rsa_for_ps256))


def test_a_small_rsa_key_is_refused() -> None:
    with pytest.raises(InvalidRegistration, match="1024 bits"):
        parse_jwks(jwks(rsa_key(bits=1024)))


def test_a_secret_client_is_stored_with_the_hash_only(db: Database) -> None:
    registered = db.writer.call(lambda c: add_client(c, "ehr-epic", ["system/ImagingStudy.rs"], None))

    assert registered.secret is not None
    row = db.read(lambda c: c.execute(select(auth_clients)).one())
    assert registered.secret not in "".join(str(v) for v in row)
    assert verify_secret(registered.secret, row.secret_hash)
    assert (row.name, row.auth_method, row.scopes) == ("ehr-epic", "client_secret", "system/ImagingStudy.rs")


def test_a_jwks_client_is_found_by_id_and_name_and_listed_without_secrets(db: Database, keys: str) -> None:
    registered = db.writer.call(lambda c: add_client(c, "ehr", ["system/*.read", "system/Patient.rs"], keys))
    client_id = registered.client.client_id

    assert registered.secret is None
    assert db.read(lambda c: find_client(c, client_id=client_id)) == registered.client
    assert db.read(lambda c: find_client(c, name="ehr")) == registered.client
    (listed,) = db.read(list_clients)
    assert listed.public_listing() == {"client_id": client_id, "name": "ehr", "auth_method": "private_key_jwt",
                                       "scopes": ["system/*.read", "system/Patient.rs"],
                                       "key_ids": ["rsa-1", "ec-1"]}


@pytest.mark.parametrize(("name", "scopes", "match"), [
    ("bad name", ["system/*.rs"], "client name"),
    ("", ["system/*.rs"], "client name"),
    ("ok", ["patient/*.read"], "not SMART system scopes"),
    ("ok", [], "at least one scope"),
])
def test_bad_registrations_are_refused(db: Database, name: str, scopes: list[str], match: str) -> None:
    with pytest.raises(InvalidRegistration, match=match):
        db.writer.call(lambda c: add_client(c, name, scopes, None))


def test_a_name_is_registered_once(db: Database) -> None:
    db.writer.call(lambda c: add_client(c, "ehr", ["system/*.rs"], None))

    with pytest.raises(InvalidRegistration, match="exists already"):
        db.writer.call(lambda c: add_client(c, "ehr", ["system/*.rs"], None))


def test_remove_deletes_by_name(db: Database) -> None:
    kept = db.writer.call(lambda c: add_client(c, "kept", ["system/*.rs"], None)).client
    gone = db.writer.call(lambda c: add_client(c, "gone", ["system/*.rs"], None)).client

    assert db.writer.call(lambda c: remove_client(c, "gone")) == gone
    assert db.writer.call(lambda c: remove_client(c, "gone")) is None
    assert db.read(list_clients) == [kept]


def test_a_jti_is_accepted_once_per_client(db: Database) -> None:
    until = datetime.now(UTC) + timedelta(minutes=5)

    assert db.writer.call(lambda c: use_jti(c, "c1", "j1", until)) is True
    assert db.writer.call(lambda c: use_jti(c, "c1", "j1", until)) is False
    assert db.writer.call(lambda c: use_jti(c, "c2", "j1", until)) is True


def test_expired_jtis_are_cleaned_up_when_a_new_one_is_recorded(db: Database) -> None:
    now = datetime.now(UTC)
    db.writer.call(lambda c: use_jti(c, "c1", "old", now - timedelta(seconds=1), now - timedelta(minutes=5)))
    db.writer.call(lambda c: use_jti(c, "c1", "live", now + timedelta(minutes=4), now - timedelta(minutes=5)))

    db.writer.call(lambda c: use_jti(c, "c1", "new", now + timedelta(minutes=5), now))

    jtis = db.read(lambda c: sorted(r.jti for r in c.execute(select(auth_used_jtis.c.jti))))
    assert jtis == ["live", "new"]


def test_a_used_jti_survives_a_restart(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'rb.db'}"
    until = datetime.now(UTC) + timedelta(minutes=5)
    first = migrated(url)
    db = next(first)
    assert db.writer.call(lambda c: use_jti(c, "c1", "j1", until))
    db.close()

    again = Database(url)
    try:
        assert again.writer.call(lambda c: use_jti(c, "c1", "j1", until)) is False
        assert again.read(lambda c: c.execute(select(func.count()).select_from(auth_used_jtis)).scalar()) == 1
    finally:
        again.close()
