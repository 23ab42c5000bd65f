"""patients.cleared, orders.cleared: the values a message deleted with the HL7 null ""

An empty field means "no change", ``""`` means "delete the value" (HL7 v2.5.1 2.5.3).
The stored value becomes empty whether it was never given or was deleted; these columns
remember the deletions (a patient's demographics, an order's descriptions and physicians),
so the stored images' values are blanked too (PIR) instead of being left as the modality
wrote them (engine.domain.patients, engine.domain.orders, engine.domain.reconcile).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 06:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0022'
down_revision: str | None = '0021'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


_TABLES = ('patients', 'orders')


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(table, sa.Column('cleared', sa.String(length=255), nullable=False, server_default=''))


def downgrade() -> None:
    # Not a batch: on SQLite that copies the table, and the copy's drop fails the orders' foreign keys
    # once there is data. SQLite (3.35+) and PostgreSQL both drop a column in place.
    for table in _TABLES:
        op.drop_column(table, 'cleared')
