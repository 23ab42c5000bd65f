"""messages.notes: what the receiving side tolerated to read a message

A lenient channel accepts timestamps outside the HL7 grammar that it can read
one way only, and skips a stray line before MSH; each such decision is a line
in this JSON list, shown by ``radbridge messages show``. Empty for the
standard message, so the receive path writes no more than before.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('messages', sa.Column('notes', sa.Text(), nullable=False, server_default=''))


def downgrade() -> None:
    # SQLite >= 3.35 drops a column in place (0007's downgrade already requires it); batch
    # mode would recreate the table, and that DROP would cascade into the outbox.
    op.execute("ALTER TABLE messages DROP COLUMN notes")
