"""PIR events and the archive's history: correction event keys, idempotent correction ADTs, the copies
of replaced versions

``reconcile_requests`` gets ``event_key`` (a random key per correction event; rows already
pending get one from their id) and ``trigger`` (the ADT event); ``correction_adts`` keys the
ADTs queued instead of corrected images; ``instance_versions`` records where each replaced
version's copies are (NULL for versions replaced before: checked as if in both locations).

Revision ID: 0019
Revises: 0017
Create Date: 2026-12-06 00:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.store.schema

revision: str = '0019'
down_revision: str | None = '0018'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('reconcile_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event_key', sa.String(length=32), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('trigger', sa.String(length=8), nullable=False, server_default=''))
    op.get_bind().execute(sa.text("UPDATE reconcile_requests SET event_key = 'legacy' || CAST(id AS TEXT)"))
    op.create_table('correction_adts',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('event_key', sa.String(length=32), nullable=False),
    sa.Column('destination', sa.String(length=64), nullable=False),
    sa.Column('patient_key', sa.String(length=64), nullable=False),
    sa.Column('outbox_pk', _ID, nullable=False),
    sa.Column('created_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_correction_adts')),
    sa.UniqueConstraint('event_key', 'destination', 'patient_key',
                        name=op.f('uq_correction_adts_event_key_destination_patient_key')),
    )
    with op.batch_alter_table('instance_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('primary_state', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('secondary_state', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('checked_at', engine.store.schema.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instance_versions', schema=None) as batch_op:
        batch_op.drop_column('checked_at')
        batch_op.drop_column('secondary_state')
        batch_op.drop_column('primary_state')
    op.drop_table('correction_adts')
    with op.batch_alter_table('reconcile_requests', schema=None) as batch_op:
        batch_op.drop_column('trigger')
        batch_op.drop_column('event_key')
