"""studies, series, patient visit fields

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 09:25:38.920817

Studies and series start empty: MPPS and C-STORE fill them from now on.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.store.schema

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('studies',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('order_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('modalities_in_study', sa.String(length=128), nullable=False),
    sa.Column('number_of_series', sa.Integer(), nullable=False),
    sa.Column('number_of_instances', sa.Integer(), nullable=False),
    sa.Column('first_seen_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.Column('last_seen_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_pk'], ['orders.id'], name=op.f('fk_studies_order_pk_orders'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['patient_pk'], ['patients.id'], name=op.f('fk_studies_patient_pk_patients')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_studies')),
    sa.UniqueConstraint('study_instance_uid', name=op.f('uq_studies_study_instance_uid'))
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_studies_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_order_pk'), ['order_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_patient_pk'), ['patient_pk'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('study_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('series_description', sa.String(length=64), nullable=False),
    sa.Column('number_of_instances', sa.Integer(), nullable=False),
    sa.Column('mpps_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('first_seen_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.Column('last_seen_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['mpps_pk'], ['mpps.id'], name=op.f('fk_series_mpps_pk_mpps'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.id'], name=op.f('fk_series_study_pk_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series')),
    sa.UniqueConstraint('series_instance_uid', name=op.f('uq_series_series_instance_uid'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_mpps_pk'), ['mpps_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_study_pk'), ['study_pk'], unique=False)

    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_class', sa.String(length=16), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('current_patient_location', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('prior_patient_location', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('visit_status', sa.String(length=16), nullable=False, server_default=''))



def downgrade() -> None:
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_column('visit_status')
        batch_op.drop_column('prior_patient_location')
        batch_op.drop_column('current_patient_location')
        batch_op.drop_column('patient_class')

    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_pk'))
        batch_op.drop_index(batch_op.f('ix_series_mpps_pk'))

    op.drop_table('series')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_patient_pk'))
        batch_op.drop_index(batch_op.f('ix_studies_order_pk'))
        batch_op.drop_index(batch_op.f('ix_studies_accession_number'))

    op.drop_table('studies')
