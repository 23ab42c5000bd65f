"""reports: radiology reports and their versions (ORU^R01 in, #14)

One ``reports`` row per report (NULL order_pk while its order is unknown), one
``report_versions`` row per version received; see engine/domain/report_tables.py.

Revision ID: 0014
Revises: 0010
Create Date: 2026-12-05 12:05:53.238816
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.store.schema

revision: str = '0014'
down_revision: str | None = '0012'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('reports',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('order_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('patient_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('placer_order_number', sa.String(length=64), nullable=False),
    sa.Column('placer_order_namespace', sa.String(length=64), nullable=False),
    sa.Column('filler_order_number', sa.String(length=64), nullable=False),
    sa.Column('filler_order_namespace', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('procedure_code_value', sa.String(length=64), nullable=False),
    sa.Column('procedure_coding_scheme', sa.String(length=64), nullable=False),
    sa.Column('procedure_code_meaning', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('result_status', sa.String(length=1), nullable=False),
    sa.Column('interpreter', sa.String(length=324), nullable=False),
    sa.Column('observation_datetime', sa.String(length=26), nullable=False),
    sa.Column('issued', engine.store.schema.UTCDateTime(), nullable=False),
    sa.Column('conclusion', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.Column('updated_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_pk'], ['orders.id'], name=op.f('fk_reports_order_pk_orders')),
    sa.ForeignKeyConstraint(['patient_pk'], ['patients.id'], name=op.f('fk_reports_patient_pk_patients')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reports'))
    )
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reports_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_filler_order_number'), ['filler_order_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_order_pk'), ['order_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_patient_pk'), ['patient_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_placer_order_number'), ['placer_order_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_study_instance_uid'), ['study_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_updated_at'), ['updated_at'], unique=False)

    op.create_table('report_versions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('report_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('result_status', sa.String(length=1), nullable=False),
    sa.Column('reported_status', sa.String(length=32), nullable=False),
    sa.Column('interpreter', sa.String(length=324), nullable=False),
    sa.Column('interpreter_id', sa.String(length=64), nullable=False),
    sa.Column('observation_datetime', sa.String(length=26), nullable=False),
    sa.Column('status_datetime', sa.String(length=26), nullable=False),
    sa.Column('conclusion', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('issued', engine.store.schema.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['report_pk'], ['reports.id'], name=op.f('fk_report_versions_report_pk_reports'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report_versions')),
    sa.UniqueConstraint('report_pk', 'version', name=op.f('uq_report_versions_report_pk_version'))
    )


def downgrade() -> None:
    op.drop_table('report_versions')
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reports_updated_at'))
        batch_op.drop_index(batch_op.f('ix_reports_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_reports_placer_order_number'))
        batch_op.drop_index(batch_op.f('ix_reports_patient_pk'))
        batch_op.drop_index(batch_op.f('ix_reports_order_pk'))
        batch_op.drop_index(batch_op.f('ix_reports_filler_order_number'))
        batch_op.drop_index(batch_op.f('ix_reports_accession_number'))

    op.drop_table('reports')
