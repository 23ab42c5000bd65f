"""stored instances: the instance index, replaced versions, quarantine; study and series fields

C-STORE adds the third level of the study index (``instances``), the history
of replaced versions (``instance_versions``) and the index of refused datasets
kept for inspection (``quarantined_instances``); studies and series gain the
attributes the first stored instance carries (patient id and name as received,
dates, description, numbers).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 09:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.store.schema

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_STUDY_TEXT = [('patient_id', 64), ('issuer_of_patient_id', 64), ('patient_name', 324), ('study_date', 8),
               ('study_time', 16), ('study_description', 64), ('study_id', 16)]


def _text(name: str, length: int) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=length), nullable=False, server_default='')


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        for name, length in _STUDY_TEXT:
            batch_op.add_column(_text(name, length))
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('series_number', sa.Integer(), nullable=True))
        batch_op.add_column(_text('series_date', 8))

    op.create_table('instances',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('study_pk', _ID, nullable=False),
    sa.Column('series_pk', _ID, nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('location', sa.String(length=32), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('received_from_ae', sa.String(length=16), nullable=False),
    sa.Column('received_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.Column('versions', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['series_pk'], ['series.id'], name=op.f('fk_instances_series_pk_series'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.id'], name=op.f('fk_instances_study_pk_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instances')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_instances_sop_instance_uid'))
    )
    op.create_index(op.f('ix_instances_series_pk'), 'instances', ['series_pk'], unique=False)
    op.create_index(op.f('ix_instances_study_pk'), 'instances', ['study_pk'], unique=False)

    op.create_table('instance_versions',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('instance_pk', _ID, nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('location', sa.String(length=32), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('received_from_ae', sa.String(length=16), nullable=False),
    sa.Column('received_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.Column('replaced_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['instance_pk'], ['instances.id'], name=op.f('fk_instance_versions_instance_pk_instances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instance_versions'))
    )
    op.create_index(op.f('ix_instance_versions_instance_pk'), 'instance_versions', ['instance_pk'], unique=False)

    op.create_table('quarantined_instances',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('received_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.Column('received_from_ae', sa.String(length=16), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('location', sa.String(length=32), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quarantined_instances'))
    )
    op.create_index(op.f('ix_quarantined_instances_received_at'), 'quarantined_instances', ['received_at'], unique=False)
    op.create_index(op.f('ix_quarantined_instances_sop_instance_uid'), 'quarantined_instances', ['sop_instance_uid'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_quarantined_instances_sop_instance_uid'), table_name='quarantined_instances')
    op.drop_index(op.f('ix_quarantined_instances_received_at'), table_name='quarantined_instances')
    op.drop_table('quarantined_instances')
    op.drop_index(op.f('ix_instance_versions_instance_pk'), table_name='instance_versions')
    op.drop_table('instance_versions')
    op.drop_index(op.f('ix_instances_study_pk'), table_name='instances')
    op.drop_index(op.f('ix_instances_series_pk'), table_name='instances')
    op.drop_table('instances')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_column('series_date')
        batch_op.drop_column('series_number')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        for name, _ in reversed(_STUDY_TEXT):
            batch_op.drop_column(name)
