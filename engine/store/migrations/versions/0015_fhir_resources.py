"""FHIR facade: materialised resources, versions, search indexes and the change feed

``fhir_resources`` (current JSON as served), ``fhir_versions`` (vread, _history),
``fhir_tokens``/``fhir_refs``/``fhir_dates``/``fhir_strings`` (search in SQL) and
``fhir_pending`` (rows appended by triggers on the domain tables, consumed by the
projector). Backfill: a pending row for every existing patient, order and study,
so the engine builds their resources on its first start after the upgrade.

Revision ID: 0015
Revises: 0010
Create Date: 2026-12-05 12:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from engine.fhir import triggers

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_INSTANT = sa.String(length=27)
_INDEXES = {'fhir_tokens': [('param', 'code', 'system', 'resource_pk'), ('resource_pk',)],
            'fhir_refs': [('param', 'target', 'resource_pk'), ('resource_pk',)],
            'fhir_dates': [('param', 'low', 'resource_pk'), ('resource_pk',)],
            'fhir_strings': [('param', 'value', 'resource_pk'), ('resource_pk',)]}


def _resource_pk(table: str) -> sa.Column[int]:
    return sa.Column('resource_pk', _ID, sa.ForeignKey('fhir_resources.id', name=op.f(f'fk_{table}_resource_pk_fhir_resources'),
                                                      ondelete='CASCADE'), nullable=False)


def upgrade() -> None:
    op.create_table('fhir_resources',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('res_type', sa.String(length=32), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', _INSTANT, nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('json', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fhir_resources')),
    sa.UniqueConstraint('res_type', 'res_id', name=op.f('uq_fhir_resources_res_type_res_id'))
    )
    op.create_index(op.f('ix_fhir_resources_res_type_last_updated'), 'fhir_resources', ['res_type', 'last_updated'])
    op.create_table('fhir_versions',
    sa.Column('resource_pk', _ID, sa.ForeignKey('fhir_resources.id', name=op.f('fk_fhir_versions_resource_pk_fhir_resources'),
                                                ondelete='CASCADE'), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', _INSTANT, nullable=False),
    sa.Column('json', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('resource_pk', 'version_id', name=op.f('pk_fhir_versions'))
    )
    op.create_table('fhir_pending',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fhir_pending'))
    )
    op.create_table('fhir_tokens', _resource_pk('fhir_tokens'),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('system', sa.String(length=255), nullable=False),
    sa.Column('code', sa.String(length=255), nullable=False))
    op.create_table('fhir_refs', _resource_pk('fhir_refs'),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=128), nullable=False))
    op.create_table('fhir_dates', _resource_pk('fhir_dates'),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('low', _INSTANT, nullable=False),
    sa.Column('high', _INSTANT, nullable=False))
    op.create_table('fhir_strings', _resource_pk('fhir_strings'),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=324), nullable=False))
    for table, indexes in _INDEXES.items():
        for columns in indexes:
            op.create_index(op.f(f"ix_{table}_{'_'.join(columns)}"), table, list(columns))
    conn = op.get_bind()
    triggers.install(conn)
    # Backfill: every existing row becomes a pending change (the projector builds it at start).
    conn.execute(sa.text("INSERT INTO fhir_pending (kind, key) SELECT 'Patient', CAST(id AS TEXT) FROM patients"))
    conn.execute(sa.text("INSERT INTO fhir_pending (kind, key) SELECT 'ServiceRequest', CAST(id AS TEXT) FROM orders"))
    conn.execute(sa.text("INSERT INTO fhir_pending (kind, key) SELECT 'study', CAST(id AS TEXT) FROM studies"))


def downgrade() -> None:
    triggers.uninstall(op.get_bind())
    for table in ('fhir_strings', 'fhir_dates', 'fhir_refs', 'fhir_tokens'):
        for columns in reversed(_INDEXES[table]):
            op.drop_index(op.f(f"ix_{table}_{'_'.join(columns)}"), table_name=table)
        op.drop_table(table)
    op.drop_table('fhir_pending')
    op.drop_table('fhir_versions')
    op.drop_index(op.f('ix_fhir_resources_res_type_last_updated'), table_name='fhir_resources')
    op.drop_table('fhir_resources')
