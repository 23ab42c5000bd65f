"""FHIR DiagnosticReport: change-feed triggers on ``reports`` and a backfill of existing reports

The triggers (engine/fhir/triggers.py) append a ``fhir_pending`` row of kind
``DiagnosticReport`` when a report is stored or gets a new version, is corrected,
cancelled or attached to its order. Backfill: a pending row for every report
attached to an order, so the engine builds their resources (every version) on its
first start after the upgrade. No table changes.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 17:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from engine.fhir import triggers

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_REPORT_SOURCES = tuple(s for s in triggers.SOURCES if s.table == 'reports')


def upgrade() -> None:
    conn = op.get_bind()
    triggers.install(conn, _REPORT_SOURCES)
    conn.execute(sa.text("INSERT INTO fhir_pending (kind, key) SELECT 'DiagnosticReport', CAST(id AS TEXT)"
                         " FROM reports WHERE order_pk IS NOT NULL"))


def downgrade() -> None:
    conn = op.get_bind()
    triggers.uninstall(conn, _REPORT_SOURCES)
    stale = "(SELECT id FROM fhir_resources WHERE res_type = 'DiagnosticReport')"
    for table in ('fhir_tokens', 'fhir_refs', 'fhir_dates', 'fhir_strings', 'fhir_versions'):
        conn.execute(sa.text(f"DELETE FROM {table} WHERE resource_pk IN {stale}"))
    conn.execute(sa.text("DELETE FROM fhir_resources WHERE res_type = 'DiagnosticReport'"))
    conn.execute(sa.text("DELETE FROM fhir_pending WHERE kind = 'DiagnosticReport'"))
