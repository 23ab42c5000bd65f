"""step identifiers kept whole: Requested Procedure ID, SPS ID, station name and AE titles, location

These are SH/AE in DICOM (16 characters), but real orders carry longer ones (the dcm4che
OMI^O23 sample's IPC-4 has 19). They are identity (MPPS and images find their step by them),
so radbridge keeps them whole up to 64 characters (engine.domain.lengths); the columns were
String(16), which SQLite ignored and PostgreSQL enforced (AE 207 on one database, AA on the
other). ``order_key`` joins four of them. SQLite does not enforce VARCHAR lengths: nothing to do.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0021'
down_revision: str | None = '0020'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

#: (table, column, type before, type after)
_WIDENED: list[tuple[str, str, sa.types.TypeEngine[str], sa.types.TypeEngine[str]]] = [
    ('orders', 'order_key', sa.String(length=255), sa.String(length=512)),
    ('orders', 'requested_procedure_id', sa.String(length=16), sa.String(length=64)),
    ('procedure_steps', 'sps_id', sa.String(length=16), sa.String(length=64)),
    ('procedure_steps', 'scheduled_station_ae_title', sa.String(length=340), sa.Text()),
    ('procedure_steps', 'scheduled_station_name', sa.String(length=16), sa.String(length=64)),
    ('procedure_steps', 'location', sa.String(length=16), sa.String(length=64)),
    ('step_station_aes', 'ae_title', sa.String(length=16), sa.String(length=64)),
]


def _postgresql() -> bool:
    return op.get_bind().dialect.name == 'postgresql'


def upgrade() -> None:
    if not _postgresql():
        return
    for table, column, before, after in _WIDENED:
        op.alter_column(table, column, existing_type=before, type_=after, existing_nullable=False)


def downgrade() -> None:
    """Refused while any value is longer than the old column: these are identities (MPPS and images find
    their steps by them; two station AE titles cut alike would collide in a primary key), and cutting them
    would lose the link silently. Shorten or remove those orders first."""
    if not _postgresql():
        return
    bind = op.get_bind()
    too_long = []
    for table, column, before, _after in _WIDENED:
        length = getattr(before, 'length', None)
        if length is None:
            continue
        count = bind.execute(sa.text(f'SELECT count(*) FROM {table} WHERE length({column}) > {int(length)}')).scalar()
        if count:
            too_long.append(f'{table}.{column}: {count} value(s) longer than {length}')
    if too_long:
        raise RuntimeError('cannot downgrade below 0021 without cutting identifiers: ' + '; '.join(too_long))
    for table, column, before, after in reversed(_WIDENED):
        op.alter_column(table, column, existing_type=after, type_=before, existing_nullable=False)
