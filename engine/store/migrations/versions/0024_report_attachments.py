"""report_versions.attachments: the documents a report version carries (OBX of value type ED)

A reporting system may send the signed report as a PDF in an OBX of value type ED
(``OBX|1|ED|...|^application^pdf^Base64^JVBERi0...``), with or without text lines. Such a
report was refused (AE 101, no text); its versions now keep the documents as received (a JSON
list of media type, subtype, encoding and data) and the ORU^R01 to the EHR carries them.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0024'
down_revision: str | None = '0023'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('report_versions', sa.Column('attachments', sa.Text(), nullable=False, server_default=''))


def downgrade() -> None:
    op.drop_column('report_versions', 'attachments')
