"""orders are found by their HL7 identity; a message row says why it changed nothing

* ``orders.placer_order_namespace`` and ``orders.filler_order_namespace`` (ORC-2.2,
  ORC-3.2) with indexes on the placer and filler order numbers: follow-up messages
  (CA, DC, XO, SC, resent NW) find their order by placer or filler number, as a RIS
  sends them, instead of by ``order_key``, whose index is dropped;
* ``messages.note``: what the handlers left alone and why (status UNCHANGED when
  they changed nothing at all).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN and CREATE INDEX, no batch copy: on SQLite a copied orders table would
    # be dropped, and the DROP cascades into procedure_steps (see 0007).
    op.add_column('messages', sa.Column('note', sa.Text(), nullable=False, server_default=''))
    for column in ('placer_order_namespace', 'filler_order_namespace'):
        op.add_column('orders', sa.Column(column, sa.String(length=64), nullable=False, server_default=''))
    op.drop_index('ix_orders_order_key', table_name='orders')
    op.create_index('ix_orders_placer_order_number', 'orders', ['placer_order_number'], unique=False)
    op.create_index('ix_orders_filler_order_number', 'orders', ['filler_order_number'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_orders_filler_order_number', table_name='orders')
    op.drop_index('ix_orders_placer_order_number', table_name='orders')
    op.create_index('ix_orders_order_key', 'orders', ['order_key'], unique=False)
    # SQLite (>= 3.35, checked by 0007's downgrade) and PostgreSQL both drop a column in place.
    for table, column in (('orders', 'filler_order_namespace'), ('orders', 'placer_order_namespace'),
                          ('messages', 'note')):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
