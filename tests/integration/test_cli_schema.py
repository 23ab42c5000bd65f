"""Only ``radbridge run`` and ``radbridge db upgrade`` migrate the database; every other command reads
the schema's revision and, when it is not this code's, says so in one line and changes nothing."""

from __future__ import annotations

import sqlite3

import pytest
from alembic import command

from engine.store.database import Database
from engine.store.migrate import alembic_config, schema_state
from tests.conftest import EngineProcess, free_port
from tests.integration.conftest import create_store, sqlite_rows, write_channel

pytestmark = pytest.mark.timeout(180)

READ_ONLY = [["status"], ["status", "--json"], ["messages", "list"], ["messages", "show", "1"], ["studies", "list"],
             ["outbox", "list"], ["clients", "list"], ["archive", "verify"], ["messages", "replay", "1"],
             ["clients", "add", "ehr", "--scope", "system/*.rs", "--secret"]]


def _url(engine: EngineProcess) -> str:
    return f"sqlite:///{engine.data_dir / 'radbridge.db'}"


def _revision(engine: EngineProcess) -> str | None:
    db = Database(_url(engine))
    try:
        return db.read(schema_state).current
    finally:
        db.close()


def _downgrade(engine: EngineProcess, revision: str = "-1") -> tuple[str, str]:
    """Move the schema back (as a database left by an older radbridge); return (now, needed)."""
    db = Database(_url(engine))
    try:
        with db.write_engine.begin() as conn:
            cfg = alembic_config(db.url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
        state = db.read(schema_state)
    finally:
        db.close()
    assert state.current is not None
    return state.current, state.head


@pytest.fixture
def behind(engine_process: EngineProcess) -> tuple[EngineProcess, str, str]:
    create_store(engine_process)
    return engine_process, *_downgrade(engine_process)


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_a_command_on_a_schema_behind_the_code_says_so_and_migrates_nothing(
        behind: tuple[EngineProcess, str, str], args: list[str]) -> None:
    engine, now, needed = behind
    done = engine.cli(*args)
    name = " ".join(a for a in args[:2] if not a.startswith("-") and not a.isdigit())
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"radbridge {name}: database at revision {now}, this radbridge needs {needed}:"
                           " run `radbridge db upgrade` (`radbridge run` also upgrades it when it starts)\n")
    assert _revision(engine) == now


def test_db_status_and_db_upgrade(behind: tuple[EngineProcess, str, str]) -> None:
    engine, now, needed = behind
    status = engine.cli("db", "status")
    assert (status.returncode, status.stdout) == (
        1, f"database at revision {now}, this radbridge needs {needed}: run `radbridge db upgrade`\n")

    upgrade = engine.cli("db", "upgrade")

    assert (upgrade.returncode, upgrade.stdout) == (0, f"database upgraded from revision {now} to {needed}\n")
    assert engine.cli("db", "status").stdout == f"database at revision {needed}: up to date\n"
    assert engine.cli("db", "upgrade").stdout == f"database at revision {needed}: up to date\n"
    assert engine.cli("status").returncode == 0


def test_a_schema_a_newer_radbridge_made_is_named_as_such(engine_process: EngineProcess) -> None:
    create_store(engine_process)
    head = _revision(engine_process)
    with sqlite3.connect(engine_process.data_dir / "radbridge.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    done = engine_process.cli("messages", "list")
    assert (done.returncode, done.stderr) == (1, "radbridge messages list: database at revision 9999, which this"
                                                 f" radbridge does not know (it needs {head}): a newer radbridge"
                                                 " upgraded it; use that version\n")
    upgrade = engine_process.cli("db", "upgrade")
    assert (upgrade.returncode, upgrade.stderr) == (1, "radbridge db upgrade: database at revision 9999, unknown to"
                                                       f" this radbridge (it needs {head}): a newer radbridge"
                                                       " upgraded it; use that version\n")
    assert sqlite_rows(engine_process.data_dir / "radbridge.db", "SELECT version_num FROM alembic_version") == [
        ("9999",)]


def test_run_upgrades_on_start_and_db_upgrade_waits_for_the_engine_to_stop(
        behind: tuple[EngineProcess, str, str]) -> None:
    engine, now, needed = behind
    port = free_port()
    write_channel(engine, "in", f"name: in\nsource: {{type: mllp, port: {port}}}\n")
    engine.start(wait_port=port)
    assert engine.cli("db", "status").stdout == f"database at revision {needed}: up to date\n"
    _downgrade(engine)  # as if this engine were older than the radbridge the operator now runs

    refused = engine.cli("db", "upgrade")

    assert refused.returncode == 1 and "is running on this data directory; stop it first" in refused.stderr
    assert _revision(engine) == now
    engine.stop()
    assert engine.cli("db", "upgrade").returncode == 0 and _revision(engine) == needed
