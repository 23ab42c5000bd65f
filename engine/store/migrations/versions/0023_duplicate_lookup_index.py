"""messages: the duplicate lookup's own index (channel, sender, control_id, received_at)

Every received message looks for an original it repeats: same channel, sender and control id, received
within the window (engine.channel.persist ``_FIND_ORIGINAL``). With ``(sender, control_id)`` and
``(channel, received_at)`` to choose from, SQLite's planner (no statistics) took the second: a scan of
every message of the channel received in the window, for every message. At 35,000 messages a lookup took
37 ms and the order path fell from ~300 to ~25 messages/s; with this index it takes 0.008 ms. The old
``(sender, control_id)`` index served only that lookup.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 13:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0023'
down_revision: str | None = '0022'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_messages_channel_sender_control_id_received_at', 'messages',
                    ['channel', 'sender', 'control_id', 'received_at'], unique=False)
    op.drop_index('ix_messages_sender_control_id', table_name='messages')


def downgrade() -> None:
    op.create_index('ix_messages_sender_control_id', 'messages', ['sender', 'control_id'], unique=False)
    op.drop_index('ix_messages_channel_sender_control_id_received_at', table_name='messages')
