"""instance copies: per-instance fixity of the File Meta Information and the state of both archive copies

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-05 12:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.store.schema

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('instance_copies',
    sa.Column('instance_pk', _ID, nullable=False),
    sa.Column('meta_sha256', sa.String(length=64), nullable=False),
    sa.Column('primary_state', sa.String(length=16), nullable=False),
    sa.Column('secondary_state', sa.String(length=16), nullable=False),
    sa.Column('secondary_verified_at', engine.store.schema.UTCDateTime(), nullable=True),
    sa.Column('primary_removed_at', engine.store.schema.UTCDateTime(), nullable=True),
    sa.Column('checked_at', engine.store.schema.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['instance_pk'], ['instances.id'], name=op.f('fk_instance_copies_instance_pk_instances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('instance_pk', name=op.f('pk_instance_copies'))
    )
    op.create_index(op.f('ix_instance_copies_checked_at'), 'instance_copies', ['checked_at'], unique=False)
    op.create_index(op.f('ix_instance_copies_secondary_state'), 'instance_copies', ['secondary_state'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_instance_copies_secondary_state'), table_name='instance_copies')
    op.drop_index(op.f('ix_instance_copies_checked_at'), table_name='instance_copies')
    op.drop_table('instance_copies')
