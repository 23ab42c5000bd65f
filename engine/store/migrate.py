"""Running Alembic migrations from inside the engine (no alembic.ini needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, func, select

from engine.errors import SchemaMismatch

__all__ = ["SchemaState", "alembic_config", "lock_schema", "require_current", "schema_state", "upgrade"]

_HERE = Path(__file__).parent
#: PostgreSQL advisory lock key of schema migrations ("rbmigrat" in ASCII).
MIGRATION_LOCK = 0x72626D6967726174


def alembic_config(url: str) -> Config:
    """An Alembic configuration pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def lock_schema(conn: Connection) -> None:
    """On PostgreSQL, hold the schema lock until ``conn``'s transaction ends (nothing on SQLite).

    Every schema change made at start-up (migrations, the FHIR change-feed
    triggers) takes it: two processes replacing the same function or trigger at
    once fail with "tuple concurrently updated".
    """
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision``.

    On PostgreSQL the upgrade holds an advisory lock until it commits: engine
    processes started together on one database migrate one after the other, and
    the later ones find the schema current (without it, all but one failed on
    ``CREATE TABLE alembic_version``).
    """
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        lock_schema(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


@dataclass(frozen=True, slots=True)
class SchemaState:
    """The database's schema revision (None: no radbridge schema) and the one this code needs."""

    current: str | None
    head: str
    known: bool  # ``current`` is None or one of this code's revisions

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def schema_state(conn: Connection) -> SchemaState:
    """Read the revision stamped in ``conn``'s database (reads only; migrates nothing)."""
    script = ScriptDirectory.from_config(alembic_config(conn.engine.url.render_as_string(hide_password=False)))
    head = script.get_current_head()
    assert head is not None, "the packaged migrations have one head"
    current = MigrationContext.configure(conn).get_current_revision()
    try:
        known = current is None or script.get_revision(current) is not None
    except CommandError:  # a revision a newer radbridge added
        known = False
    return SchemaState(current, head, known)


def require_current(state: SchemaState) -> None:
    """Raise SchemaMismatch, saying what to do, unless the schema is at this code's revision."""
    if state.up_to_date:
        return
    upgrade = "run `radbridge db upgrade` (`radbridge run` also upgrades it when it starts)"
    if state.current is None:
        raise SchemaMismatch(f"the database has no radbridge schema yet: {upgrade}")
    if not state.known:
        raise SchemaMismatch(f"database at revision {state.current}, which this radbridge does not know (it needs"
                             f" {state.head}): a newer radbridge upgraded it; use that version")
    raise SchemaMismatch(f"database at revision {state.current}, this radbridge needs {state.head}: {upgrade}")
