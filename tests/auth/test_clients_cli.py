"""``radbridge clients add|list|remove``: credentials printed once, never stored in clear, every command audited."""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
from pathlib import Path

from engine.auth.client_secret import verify_secret
from tests.auth.keys import ec_key, jwks, rsa_key
from tests.conftest import EngineProcess


def _rows(engine: EngineProcess, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(engine.data_dir / "radbridge.db") as conn:
        return conn.execute(sql).fetchall()


def test_add_with_secret_prints_it_once_and_stores_only_its_hash(engine_process: EngineProcess) -> None:
    result = engine_process.cli("clients", "add", "ehr", "--scope", "system/ImagingStudy.rs", "system/*.read",
                                "--secret", "--json")

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["name"] == "ehr" and shown["auth_method"] == "client_secret"
    assert shown["scopes"] == ["system/ImagingStudy.rs", "system/*.read"]
    ((client_id, secret_hash),) = _rows(engine_process, "SELECT client_id, secret_hash FROM auth_clients")
    assert client_id == shown["client_id"]
    assert verify_secret(shown["client_secret"], str(secret_hash))
    for path in engine_process.data_dir.glob("radbridge.db*"):  # the -wal file too
        assert shown["client_secret"].encode() not in path.read_bytes()

    listed = engine_process.cli("clients", "list", "--json")
    assert json.loads(listed.stdout) == [{"client_id": client_id, "name": "ehr", "auth_method": "client_secret",
                                          "scopes": ["system/ImagingStudy.rs", "system/*.read"], "key_ids": []}]
    assert shown["client_secret"] not in listed.stdout


def test_add_with_a_jwks_file_registers_its_public_keys(engine_process: EngineProcess, tmp_path: Path) -> None:
    path = tmp_path / "ehr.jwks"
    path.write_text(jwks(rsa_key("r1"), ec_key("e1")))

    result = engine_process.cli("clients", "add", "ehr", "--scope", "system/ImagingStudy.rs", "--jwks", str(path))

    assert result.returncode == 0, result.stderr
    assert "auth_method: private_key_jwt" in result.stdout and "key_ids: r1 e1" in result.stdout
    assert "client_secret" not in result.stdout
    table = engine_process.cli("clients", "list").stdout.splitlines()
    assert table[0] == "name\tclient_id\tauth_method\tscopes"
    assert table[1].startswith("ehr\t") and table[1].endswith("\tprivate_key_jwt\tsystem/ImagingStudy.rs")


def test_refused_registrations_say_why_and_store_nothing(engine_process: EngineProcess, tmp_path: Path) -> None:
    private = tmp_path / "private.jwks"
    private.write_text(json.dumps({"keys": [rsa_key().jwk.as_dict(private=True)]}))

    cases = [
        (["add", "x", "--scope", "patient/*.read", "--secret"], "not SMART system scopes: patient/*.read"),
        (["add", "x", "--scope", "system/*.rs", "--jwks", str(private)], "private key material"),
        (["add", "x", "--scope", "system/*.rs", "--jwks", str(tmp_path / "missing")], "No such file"),
        (["add", "bad name", "--scope", "system/*.rs", "--secret"], "client name"),
    ]
    for args, message in cases:
        result = engine_process.cli("clients", *args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
    assert _rows(engine_process, "SELECT count(*) FROM auth_clients") == [(0,)]


def test_add_needs_exactly_one_of_jwks_and_secret(engine_process: EngineProcess, tmp_path: Path) -> None:
    neither = engine_process.cli("clients", "add", "x", "--scope", "system/*.rs")
    both = engine_process.cli("clients", "add", "x", "--scope", "system/*.rs", "--secret", "--jwks", "f")

    assert neither.returncode == both.returncode == 2


def test_remove_deletes_the_client_and_says_so_when_there_is_none(engine_process: EngineProcess) -> None:
    engine_process.cli("clients", "add", "ehr", "--scope", "system/*.rs", "--secret")

    removed = engine_process.cli("clients", "remove", "ehr")
    again = engine_process.cli("clients", "remove", "ehr")

    assert removed.returncode == 0 and "removed client ehr" in removed.stdout
    assert again.returncode == 1 and "no client named ehr" in again.stderr
    assert _rows(engine_process, "SELECT count(*) FROM auth_clients") == [(0,)]


def test_every_command_is_audited_with_the_os_user_as_actor(engine_process: EngineProcess) -> None:
    added = json.loads(engine_process.cli("clients", "add", "ehr", "--scope", "system/*.rs", "--secret",
                                          "--json").stdout)
    engine_process.cli("clients", "list")
    engine_process.cli("clients", "remove", "ehr")

    events = _rows(engine_process, "SELECT actor, action, object_type, object_id, detail FROM audit_events ORDER BY id")
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert [e[:4] for e in events] == [(me, "client.add", "client", added["client_id"]),
                                       (me, "client.list", "client", ""),
                                       (me, "client.remove", "client", added["client_id"])]
    detail = json.loads(str(events[0][4]))
    assert detail["name"] == "ehr" and detail["scopes"] == ["system/*.rs"] and detail["pid"]
    assert all(added["client_secret"] not in str(e) for e in events)
