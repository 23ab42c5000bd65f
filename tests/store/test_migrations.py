"""The Alembic migrations build exactly the schema the code's table definitions describe."""

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import engine.domain.tables  # noqa: F401 - registers the domain tables on the shared metadata
from engine.store.migrate import alembic_config, upgrade
from engine.store.schema import metadata


def test_migrated_schema_matches_the_table_definitions(db) -> None:
    with db.write_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata)
    assert diff == []


def test_every_migration_downgrades_and_upgrades_again(db) -> None:
    with db.write_engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")
    with db.write_engine.connect() as conn:
        indexes = {i["name"] for i in inspect(conn).get_indexes("orders")}
    assert "ix_orders_placer_order_number" in indexes
    upgrade(db.write_engine)
    with db.write_engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata) == []
