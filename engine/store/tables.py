"""Imports every module that defines tables, so the metadata is complete for Alembic."""

import engine.archive.copy_tables
import engine.auth.tables
import engine.domain.instance_tables
import engine.domain.reconcile_tables
import engine.domain.report_tables
import engine.domain.tables
import engine.fhir.tables  # noqa: F401
from engine.store import schema  # noqa: F401
