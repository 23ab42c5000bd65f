"""messages.acknowledged_at: an operator dealt with this AE/AR message (``radbridge messages ack``)

``radbridge status`` listed every message ever answered AE or AR under "needs attention", for ever,
however long ago the operator had dealt with it (a sender's fixed resend, a test message). An
acknowledged message is no longer counted there; the message, its error and the ``message.ack``
audit event (who, when) are kept. The partial index of messages that are not PROCESSED covers the
new column too, so that ``status`` still counts without reading a message row.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07 18:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import engine.store.schema

revision: str = '0027'
down_revision: str | None = '0026'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


_UNPROCESSED = "status <> 'PROCESSED'"


def _replace(columns: list[str]) -> None:
    op.drop_index('ix_messages_unprocessed', table_name='messages')
    op.create_index('ix_messages_unprocessed', 'messages', columns, unique=False,
                    sqlite_where=sa.text(_UNPROCESSED), postgresql_where=sa.text(_UNPROCESSED))


def upgrade() -> None:
    op.add_column('messages', sa.Column('acknowledged_at', engine.store.schema.UTCDateTime(), nullable=True))
    _replace(['status', 'id', 'channel', 'acknowledged_at'])


def downgrade() -> None:
    _replace(['status', 'id', 'channel'])
    op.drop_column('messages', 'acknowledged_at')
