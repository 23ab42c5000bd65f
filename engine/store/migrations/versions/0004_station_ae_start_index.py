"""station AE + start datetime index for targeted worklist queries

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 07:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('step_station_aes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('start_datetime', sa.String(length=14), nullable=False, server_default=''))
    op.execute(
        "UPDATE step_station_aes SET start_datetime = (SELECT procedure_steps.start_datetime "
        "FROM procedure_steps WHERE procedure_steps.id = step_station_aes.step_pk)"
    )
    with op.batch_alter_table('step_station_aes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_step_station_aes_ae_title_start_datetime'), ['ae_title', 'start_datetime'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('step_station_aes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_step_station_aes_ae_title_start_datetime'))
        batch_op.drop_column('start_datetime')
