"""the partial index of messages that are not PROCESSED also holds their channel

``radbridge status`` counted messages per channel and status with a GROUP BY
over the whole messages table: with a few hundred thousand messages, seconds
with a cold cache. It now counts received messages on the narrow
(channel, received_at) index and errors and filtered messages on this partial
index, which now covers the channel too, (status, id, channel), and so answers
without reading a single message row; listing by status still reads it in id
order. PROCESSED messages are not in it: the receive path writes it only
for the few messages that fail or are filtered.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 02:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_UNPROCESSED = "status <> 'PROCESSED'"


def _replace(columns: list[str]) -> None:
    op.drop_index('ix_messages_unprocessed', table_name='messages')
    op.create_index('ix_messages_unprocessed', 'messages', columns, unique=False,
                    sqlite_where=sa.text(_UNPROCESSED), postgresql_where=sa.text(_UNPROCESSED))


def upgrade() -> None:
    _replace(['status', 'id', 'channel'])


def downgrade() -> None:
    _replace(['status', 'id'])
