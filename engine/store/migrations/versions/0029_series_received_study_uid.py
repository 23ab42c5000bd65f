"""series.received_study_instance_uid: the Study Instance UID a series' first image arrived with, when its
coercion filed it under another one (a site mapping that coerces StudyInstanceUID to the order's)

A later image of the series that arrives with that same received Study Instance UID follows the same
coercion and joins the study; an image of the series under any other study is refused (0xC240), so
that no series is split across two studies. Empty for every series filed under the Study Instance UID
its images carry (all of them before this revision).

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-07 21:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0029'
down_revision: str | None = '0028'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('received_study_instance_uid', sa.String(length=64), nullable=False,
                                      server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_column('received_study_instance_uid')
