"""authorization: registered clients and used assertion ids

``auth_clients`` holds the clients registered with ``radbridge clients add`` (public
JWKS or a salted secret hash, registered scopes); ``auth_used_jtis`` the ``jti`` of
every accepted client assertion until it expires, so a replay is refused.

Revision ID: 0016
Revises: 0010
Create Date: 2026-12-05 12:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.store.schema

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('auth_clients',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('auth_method', sa.String(length=32), nullable=False),
    sa.Column('scopes', sa.Text(), nullable=False),
    sa.Column('jwks', sa.Text(), nullable=False),
    sa.Column('secret_hash', sa.String(length=160), nullable=False),
    sa.Column('created_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_clients')),
    sa.UniqueConstraint('client_id', name=op.f('uq_auth_clients_client_id')),
    sa.UniqueConstraint('name', name=op.f('uq_auth_clients_name'))
    )
    op.create_table('auth_used_jtis',
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('jti', sa.String(length=255), nullable=False),
    sa.Column('expires_at', engine.store.schema.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('client_id', 'jti', name=op.f('pk_auth_used_jtis'))
    )
    op.create_index(op.f('ix_auth_used_jtis_expires_at'), 'auth_used_jtis', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_auth_used_jtis_expires_at'), table_name='auth_used_jtis')
    op.drop_table('auth_used_jtis')
    op.drop_table('auth_clients')
