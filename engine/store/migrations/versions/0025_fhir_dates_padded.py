"""fhir_dates: pad the years before 1000 written without leading zeros

Until fbb7cf0 the projector wrote search-index instants with strftime("%Y…"), which glibc writes
without leading zeros for years before 1000 ("999-01-01T00:00:00.000000Z" instead of
"0999-01-01T…"). Ranges are compared as fixed-width text, so such a row sorted after every
year from 1000 on: a patient born in 0999 (a typo in PID-7, an old date from a converted
archive) was found by birthdate=ge1980 and not by lt1000. The fix writes padded text, but
rows written before it stay until their resource changes. This rewrites them: every
``low``/``high`` shorter than the fixed 27 characters gets its leading zeros back (the year is
the only part ``%Y`` left unpadded). One pass over ``fhir_dates``; nothing to undo on downgrade
(padded text is what every version of the code reads correctly).

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 18:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0025'
down_revision: str | None = '0024'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_WIDTH = 27  # engine.fhir.tables.INSTANT_LENGTH: "2026-12-05T10:15:30.000000Z"


def upgrade() -> None:
    conn = op.get_bind()
    dates = sa.table('fhir_dates', sa.column('resource_pk'), sa.column('param'), sa.column('low'),
                     sa.column('high'))
    c = dates.c
    short = conn.execute(sa.select(c.resource_pk, c.param, c.low, c.high).distinct().where(
        sa.or_(sa.func.length(c.low) < _WIDTH, sa.func.length(c.high) < _WIDTH))).all()
    if not short:
        return
    statement = sa.update(dates).where(
        c.resource_pk == sa.bindparam('pk'), c.param == sa.bindparam('p'), c.low == sa.bindparam('old_low'),
        c.high == sa.bindparam('old_high')).values(low=sa.bindparam('new_low'), high=sa.bindparam('new_high'))
    conn.execute(statement, [{'pk': row.resource_pk, 'p': row.param, 'old_low': row.low, 'old_high': row.high,
                              'new_low': row.low.rjust(_WIDTH, '0'), 'new_high': row.high.rjust(_WIDTH, '0')}
                             for row in short])


def downgrade() -> None:
    pass
