"""message attempts: each processing of a message (receipt, then every in-place replay)

``radbridge messages replay`` reprocesses a message in place (same id); each attempt's time,
actor, outcome and error text are kept here.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 02:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.store.schema

revision: str = '0020'
down_revision: str | None = '0019'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('message_attempts',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('message_id', _ID, nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.Column('via', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('ack_code', sa.String(length=2), nullable=False),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('error_location', sa.String(length=64), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('ack', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_message_attempts_message_id_messages'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_message_attempts')),
    sa.UniqueConstraint('message_id', 'attempt', name=op.f('uq_message_attempts_message_id_attempt')),
    )


def downgrade() -> None:
    op.drop_table('message_attempts')
