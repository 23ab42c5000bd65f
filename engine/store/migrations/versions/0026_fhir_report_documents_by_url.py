"""Stored DiagnosticReports name their documents by URL (Binary) instead of carrying them inline

Until this version a report's documents (a PDF in an OBX of type ED) were base64 ``data`` in
``presentedForm`` of every stored DiagnosticReport version, so a search page (or a ``_history``
page) of reports with PDFs was as large as all their PDFs together. The projector now writes
``url`` ``Binary/report-<report>-<version>-<n>`` with ``size`` and ``hash`` (engine.fhir.binary).
A report is rebuilt only when it changes, and earlier versions are never rewritten by it, so
this rewrites the stored JSON of every version (``fhir_versions``) and the current one
(``fhir_resources``, with its content hash) of each report that has documents, in place:
``versionId`` and ``lastUpdated`` are kept. One report at a time (its versions' JSON only in
memory). A version whose stored forms do not line up with its documents is left as it is.
Downgrade: the documents inline again, as the older code wrote them (it serves no Binary, so a URL form
left in place named a document nothing served until the report changed).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 18:20:00.000000
"""

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from engine.fhir.binary import DOCUMENT_TITLE, attachment, documents, parse_id
from engine.fhir.store import dumps

revision: str = '0026'
down_revision: str | None = '0025'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_resources = sa.table('fhir_resources', sa.column('id'), sa.column('res_type'), sa.column('res_id'),
                      sa.column('content_hash'), sa.column('json'))
_versions = sa.table('fhir_versions', sa.column('resource_pk'), sa.column('version_id'), sa.column('json'))
_report_versions = sa.table('report_versions', sa.column('report_pk'), sa.column('version'),
                            sa.column('attachments'))


def _rewritten(text: str, report_pk: int, attachments: dict[int, str]) -> dict[str, Any] | None:
    """The stored document with its inline documents replaced by their URL form; None if nothing changes."""
    doc = json.loads(text)
    version = int(doc.get('meta', {}).get('versionId', 0))
    forms = doc.get('presentedForm') or []
    inline = [n for n, f in enumerate(forms) if f.get('title') == DOCUMENT_TITLE and 'data' in f]
    found = documents(attachments.get(version, ''))
    if not inline or len(inline) != len(found):
        return None
    for n, document in zip(inline, found, strict=True):
        creation = {'creation': forms[n]['creation']} if 'creation' in forms[n] else {}
        forms[n] = attachment(report_pk, version, document) | creation
    return dict(doc)


def _inlined(text: str, report_pk: int, attachments: dict[int, str]) -> dict[str, Any] | None:
    """The stored document with its documents named by URL (those the projector wrote: with a hash) carrying
    their bytes as ``data`` again, as the code before this revision wrote them; None if nothing changes."""
    doc = json.loads(text)
    forms, changed = doc.get('presentedForm') or [], False
    for n, form in enumerate(forms):
        url = form.get('url', '')
        parsed = parse_id(url[len('Binary/'):]) if url.startswith('Binary/') and 'hash' in form else None
        if parsed is None or parsed[0] != report_pk:
            continue
        found = next((d for d in documents(attachments.get(parsed[1], '')) if d.n == parsed[2]), None)
        if found is None:
            continue
        creation = {'creation': form['creation']} if 'creation' in form else {}
        forms[n] = {'contentType': found.content_type, 'data': base64.b64encode(found.data).decode('ascii'),
                    'title': form.get('title', DOCUMENT_TITLE)} | creation
        changed = True
    return dict(doc) if changed else None


def _rewrite(rewritten: Callable[[str, int, dict[int, str]], dict[str, Any] | None]) -> None:
    """Every stored version (and the current row, with its content hash) of each report with documents, as
    ``rewritten`` gives it; one report at a time."""
    conn = op.get_bind()
    rv = _report_versions.c
    pks = [int(pk) for (pk,) in conn.execute(sa.select(rv.report_pk).distinct().where(
        rv.attachments.not_in(['', '[]'])).order_by(rv.report_pk))]
    r, v = _resources.c, _versions.c
    for report_pk in pks:
        row = conn.execute(sa.select(r.id, r.json).where(r.res_type == 'DiagnosticReport',
                                                          r.res_id == str(report_pk))).first()
        if row is None:
            continue  # not published (no order yet): the projector writes the new form
        attachments = {int(n): a for n, a in conn.execute(
            sa.select(rv.version, rv.attachments).where(rv.report_pk == report_pk))}
        for version_id, text in conn.execute(sa.select(v.version_id, v.json).where(v.resource_pk == row.id)).all():
            doc = rewritten(text, report_pk, attachments)
            if doc is not None:
                conn.execute(sa.update(_versions).where(v.resource_pk == row.id, v.version_id == version_id)
                             .values(json=dumps(doc)))
        doc = rewritten(row.json, report_pk, attachments)
        if doc is not None:
            body = {k: value for k, value in doc.items() if k != 'meta'}  # what the content hash is of
            conn.execute(sa.update(_resources).where(r.id == row.id).values(
                json=dumps(doc), content_hash=hashlib.sha256(dumps(body).encode()).hexdigest()))


def upgrade() -> None:
    _rewrite(_rewritten)


def downgrade() -> None:
    _rewrite(_inlined)
