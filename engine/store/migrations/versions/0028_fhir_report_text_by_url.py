"""Stored DiagnosticReports name a large report text by URL (Binary) instead of carrying it inline

The projector now writes a report text over ``engine.fhir.binary.INLINE_TEXT_BYTES`` (64 KiB, UTF-8) as
``url`` ``Binary/report-<report>-<version>-0`` with ``size`` and ``hash``, so that a report system sending
megabytes of text does not make every search or ``_history`` page carrying it megabytes too. A report is rebuilt
only when it changes, and earlier versions never are, so this rewrites the stored JSON of the versions
(``fhir_versions``) and the current row (``fhir_resources``, with its content hash) of each report with such a
text, in place: ``versionId`` and ``lastUpdated`` are kept. One report at a time. A stored text form that is not
the version's text (decoded) is left as it is.
Downgrade: the text inline again, as the code before this revision wrote it.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07 21:10:00.000000
"""

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from engine.fhir.binary import INLINE_TEXT_BYTES, REPORT_TITLE, parse_id, report_text
from engine.fhir.store import dumps

revision: str = '0028'
down_revision: str | None = '0027'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_resources = sa.table('fhir_resources', sa.column('id'), sa.column('res_type'), sa.column('res_id'),
                      sa.column('content_hash'), sa.column('json'))
_versions = sa.table('fhir_versions', sa.column('resource_pk'), sa.column('version_id'), sa.column('json'))
_report_versions = sa.table('report_versions', sa.column('report_pk'), sa.column('version'), sa.column('text'))
_TEXT_TYPE = 'text/plain; charset=utf-8'


def _by_url(text: str, report_pk: int, texts: dict[int, str]) -> dict[str, Any] | None:
    """The stored document with its large inline report text replaced by the URL form; None if nothing changes."""
    doc = json.loads(text)
    version = int(doc.get('meta', {}).get('versionId', 0))
    forms = doc.get('presentedForm') or []
    report = texts.get(version, '').encode()
    if not forms or len(report) <= INLINE_TEXT_BYTES:
        return None
    first = forms[0]
    if first.get('title') != REPORT_TITLE or first.get('contentType') != _TEXT_TYPE or 'data' not in first:
        return None
    try:
        if base64.b64decode(first['data']) != report:
            return None
    except (binascii.Error, ValueError):
        return None
    creation = {'creation': first['creation']} if 'creation' in first else {}
    forms[0] = report_text(report_pk, version, texts[version]) | creation
    return dict(doc)


def _inline(text: str, report_pk: int, texts: dict[int, str]) -> dict[str, Any] | None:
    """The stored document with its report text named by URL (``…-0``) inline again; None if nothing changes."""
    doc = json.loads(text)
    forms = doc.get('presentedForm') or []
    url = forms[0].get('url', '') if forms else ''
    parsed = parse_id(url[len('Binary/'):]) if url.startswith('Binary/') else None
    if parsed is None or parsed[0] != report_pk or parsed[2] != 0 or parsed[1] not in texts:
        return None
    creation = {'creation': forms[0]['creation']} if 'creation' in forms[0] else {}
    forms[0] = {'contentType': _TEXT_TYPE, 'data': base64.b64encode(texts[parsed[1]].encode()).decode('ascii'),
                'title': REPORT_TITLE} | creation
    return dict(doc)


def _rewrite(rewritten: Callable[[str, int, dict[int, str]], dict[str, Any] | None]) -> None:
    """Every stored version (and the current row, with its content hash) of each report with a large text, as
    ``rewritten`` gives it; one report at a time."""
    conn = op.get_bind()
    rv = _report_versions.c
    # characters are at most 4 UTF-8 bytes each: every text over the limit in bytes is over a quarter of it here
    pks = [int(pk) for (pk,) in conn.execute(sa.select(rv.report_pk).distinct().where(
        sa.func.length(rv.text) > INLINE_TEXT_BYTES // 4).order_by(rv.report_pk))]
    r, v = _resources.c, _versions.c
    for report_pk in pks:
        row = conn.execute(sa.select(r.id, r.json).where(r.res_type == 'DiagnosticReport',
                                                          r.res_id == str(report_pk))).first()
        if row is None:
            continue  # not published (no order yet): the projector writes the new form
        texts = {int(n): t for n, t in conn.execute(sa.select(rv.version, rv.text).where(rv.report_pk == report_pk))}
        for version_id, text in conn.execute(sa.select(v.version_id, v.json).where(v.resource_pk == row.id)).all():
            doc = rewritten(text, report_pk, texts)
            if doc is not None:
                conn.execute(sa.update(_versions).where(v.resource_pk == row.id, v.version_id == version_id)
                             .values(json=dumps(doc)))
        doc = rewritten(row.json, report_pk, texts)
        if doc is not None:
            body = {k: value for k, value in doc.items() if k != 'meta'}  # what the content hash is of
            conn.execute(sa.update(_resources).where(r.id == row.id).values(
                json=dumps(doc), content_hash=hashlib.sha256(dumps(body).encode()).hexdigest()))


def upgrade() -> None:
    _rewrite(_by_url)


def downgrade() -> None:
    _rewrite(_inline)
