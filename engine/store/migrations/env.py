"""Alembic environment: uses the connection handed over by engine.store.migrate."""

from alembic import context
from sqlalchemy import create_engine

import engine.store.tables  # noqa: F401  (registers every table on the metadata)
from engine.store.schema import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is not None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    db_engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    with db_engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
