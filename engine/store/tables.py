"""Imports every module that defines tables, so the metadata is complete for Alembic."""

from engine.store import schema  # noqa: F401
