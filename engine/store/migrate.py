"""Running Alembic migrations from inside the engine (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, func, select

__all__ = ["alembic_config", "lock_schema", "upgrade"]

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
