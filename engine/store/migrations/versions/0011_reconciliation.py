"""reconciliation: the study's matched step, the received checksum of coerced instances, late-order and
correction requests

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 12:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.store.schema

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('step_pk', _ID, nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_studies_step_pk_procedure_steps'), 'procedure_steps',
                                    ['step_pk'], ['id'], ondelete='SET NULL')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('received_sha256', sa.String(length=64), nullable=False, server_default=''))
    op.create_table('reconcile_requests',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('order_pk', _ID, nullable=True),
    sa.Column('patient_pk', _ID, nullable=True),
    sa.Column('created_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_pk'], ['orders.id'], name=op.f('fk_reconcile_requests_order_pk_orders'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['patient_pk'], ['patients.id'], name=op.f('fk_reconcile_requests_patient_pk_patients'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reconcile_requests')),
    )
    with op.batch_alter_table('reconcile_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reconcile_requests_order_pk'), ['order_pk'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reconcile_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reconcile_requests_order_pk'))
    op.drop_table('reconcile_requests')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('received_sha256')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_studies_step_pk_procedure_steps'), type_='foreignkey')
        batch_op.drop_column('step_pk')
