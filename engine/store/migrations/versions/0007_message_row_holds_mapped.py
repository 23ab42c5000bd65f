"""the message row holds its mapped records; errors get a partial index; station AEs without rowid

Each new order wrote 27 WAL pages at commit, about one per B-tree it touched.
Three B-trees go:

* ``message_stages`` (table and index): its one stage, the mapped records,
  becomes the column ``messages.mapped``;
* ``ix_messages_status_received_at`` becomes ``ix_messages_unprocessed`` on
  (status, id) for the messages that are not PROCESSED, the ones an operator
  lists by status;
* ``step_station_aes`` becomes a WITHOUT ROWID table on SQLite, its rows stored
  in the primary key's B-tree.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 14:30:00.000000
"""

import sqlite3
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_UNPROCESSED = "status <> 'PROCESSED'"


def _sqlite() -> bool:
    return op.get_bind().dialect.name == 'sqlite'


def upgrade() -> None:
    op.add_column('messages', sa.Column('mapped', sa.Text(), nullable=False, server_default=''))
    op.execute(
        "UPDATE messages SET mapped = (SELECT s.content FROM message_stages s WHERE s.message_id = messages.id"
        " AND s.stage = 'mapped' ORDER BY s.id DESC LIMIT 1)"
        " WHERE id IN (SELECT message_id FROM message_stages WHERE stage = 'mapped')"
    )
    op.drop_index('ix_message_stages_message_id', table_name='message_stages')
    op.drop_table('message_stages')
    op.drop_index('ix_messages_status_received_at', table_name='messages')
    op.create_index('ix_messages_unprocessed', 'messages', ['status', 'id'], unique=False,
                    sqlite_where=sa.text(_UNPROCESSED), postgresql_where=sa.text(_UNPROCESSED))
    if _sqlite():
        with op.batch_alter_table('step_station_aes', recreate='always',
                                  table_kwargs={'sqlite_with_rowid': False}) as batch_op:
            batch_op.alter_column('ae_title', existing_type=sa.String(length=16), existing_nullable=False)


def downgrade() -> None:
    if _sqlite() and sqlite3.sqlite_version_info < (3, 35, 0):
        # Checked before anything changes: see the DROP COLUMN below.
        raise RuntimeError(f"downgrading below 0007 needs SQLite 3.35 or later (this is {sqlite3.sqlite_version})")
    if _sqlite():
        with op.batch_alter_table('step_station_aes', recreate='always',
                                  table_kwargs={'sqlite_with_rowid': True}) as batch_op:
            batch_op.alter_column('ae_title', existing_type=sa.String(length=16), existing_nullable=False)
    op.drop_index('ix_messages_unprocessed', table_name='messages')
    op.create_index('ix_messages_status_received_at', 'messages', ['status', 'received_at'], unique=False)
    id_type = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table(
        'message_stages',
        sa.Column('id', id_type, autoincrement=True, nullable=False),
        sa.Column('message_id', id_type, nullable=False),
        sa.Column('stage', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('content', sa.Text(), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name='fk_message_stages_message_id_messages',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_message_stages'),
    )
    op.create_index('ix_message_stages_message_id', 'message_stages', ['message_id'], unique=False)
    op.execute(
        "INSERT INTO message_stages (message_id, stage, status, content, error, created_at)"
        " SELECT id, 'mapped', 'OK', mapped, '', received_at FROM messages WHERE mapped <> '' ORDER BY id"
    )
    if _sqlite():
        # SQLite >= 3.35 drops a column in place. Alembic's batch mode would copy the table
        # and drop the old one, and that DROP cascades into message_stages (deleting the rows
        # just copied) and sets outbox.message_id to NULL.
        op.execute("ALTER TABLE messages DROP COLUMN mapped")
    else:
        op.drop_column('messages', 'mapped')
