"""Report documents (a PDF in an OBX of type ED) as FHIR ``Binary`` resources, served from the report tables.

A DiagnosticReport's ``presentedForm`` names each document by URL (``Binary/report-<report>-<version>-<n>``,
``n`` counting the version's documents from 1 as received) with its ``contentType``, ``size`` and SHA-1
``hash``, instead of carrying its bytes in base64 ``data``: a search page of 50 reports each with a
10 MB PDF was 500 MB of JSON, built in memory. US Core DiagnosticReport allows ``presentedForm.url``;
a client fetches the document when it wants it (R4 http.html#binary: the raw bytes, or the Binary resource
as FHIR JSON). The bytes are read from ``report_versions.attachments`` at each request, never stored twice;
a document is served only while its report is (the report's DiagnosticReport is stored).

The report's own text stays inline (``text/plain`` ``data``) up to :data:`INLINE_TEXT_BYTES`: it is the report, and
usually a few KB. A larger text (a report system that sends megabytes of text) is named by URL as well, as document
0 of its version (``Binary/report-<report>-<version>-0``), so a resource stays small whatever the report weighs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from engine.domain.report_documents import document_bytes
from engine.domain.report_tables import report_versions
from engine.fhir.tables import fhir_resources

__all__ = ["DOCUMENT_TITLE", "INLINE_TEXT_BYTES", "REPORT_TITLE", "Document", "attachment", "binary_id", "documents",
           "inline", "parse_id", "presented", "read_document", "referenced", "report_text"]

DOCUMENT_TITLE = "Radiology report document"
REPORT_TITLE = "Radiology report"
#: A report text longer than this (UTF-8 bytes) is served as a Binary, by URL, not inline in the DiagnosticReport.
INLINE_TEXT_BYTES = 64 * 1024
_TEXT_TYPE = "text/plain; charset=utf-8"
#: An absolute URI: a scheme (RFC 3986 3.1), a colon, then something.
_ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S")
_ID = re.compile(r"^report-([0-9]{1,18})-([0-9]{1,9})-([0-9]{1,4})$")
#: HL7 table 0191 (ED-2 / RP-3 type of data) codes as MIME top-level types (SD, a scanned document: by subtype).
_MEDIA_TYPES = {"AP": "application", "IM": "image", "TEXT": "text", "AU": "audio", "MULTIPART": "multipart",
                "SI": "image", "NS": "image", "FT": "text", "SD": "image"}
#: MIME top-level types (RFC 6838 4.2), which some senders write in ED-2/RP-3 instead of a table 0191 code.
_MIME_TOPS = frozenset({"application", "audio", "font", "image", "message", "model", "multipart", "text", "video"})


@dataclass(frozen=True, slots=True)
class Document:
    """One document of a report version: ``n`` (from 1, as received), its MIME type and bytes."""

    n: int
    content_type: str
    data: bytes


def binary_id(report_pk: int | str, version: int, n: int) -> str:
    """The id of the Binary serving document ``n`` of a report version."""
    return f"report-{report_pk}-{version}-{n}"


def parse_id(text: str) -> tuple[int, int, int] | None:
    """(report pk, version, n) of a Binary id of this server, or None."""
    match = _ID.match(text)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def documents(attachments: str) -> list[Document]:
    """A version's ED documents (``report_versions.attachments``); one that cannot be decoded is left out
    (its number is not reused), as is an RP reference (not ours to serve; its number kept)."""
    return [document for n, doc in enumerate(json.loads(attachments or "[]"), 1)
            if (document := _document(n, doc)) is not None]


def _content_type(doc: dict[str, Any], fallback: bool) -> str:
    """The MIME type of an ED or RP entry (HL7 table 0191 codes read as MIME types), "" when it names none.

    Some senders give the whole MIME type in the subtype (``^Text^text/xml^ASCII^...``, IHE RAD CDA reports)
    or the type: used as it is (it was ``text/text/xml``). A type that is neither a table 0191 code nor a MIME
    top-level type (a local ``ZB``) is no MIME type (it was ``zb/octet-stream``): ``fallback`` (a document we
    serve) makes it ``application/<subtype>``, else (a reference) there is no type to give.
    """
    kind, minor = str(doc.get("media_type", "")).strip().lower(), str(doc.get("media_subtype", "")).strip().lower()
    for whole in (minor, kind):
        top, _, sub = whole.partition("/")
        if top in _MIME_TOPS and sub:
            return whole
    major = _MEDIA_TYPES.get(kind.upper(), kind if kind in _MIME_TOPS else "")
    if kind.upper() == "SD" and minor == "pdf":  # a scanned document as PDF
        major = "application"
    if not major and not fallback:
        return ""
    return f"{major or 'application'}/{minor or 'octet-stream'}"


def _document(n: int, doc: dict[str, Any]) -> Document | None:
    """Entry ``n`` of a version's attachments as a document, or None (an RP reference, or undecodable)."""
    if doc.get("reference"):
        return None
    decoded = document_bytes(doc.get("encoding", ""), doc.get("data", ""))
    if decoded is None:  # said at receipt (engine.domain.reports: the message's note)
        return None
    charset = f"; charset={decoded.charset}" if decoded.charset else ""
    return Document(n, _content_type(doc, fallback=True) + charset, decoded.data)


def attachment(report_pk: int | str, version: int, document: Document) -> dict[str, Any]:
    """The R4 Attachment naming ``document`` by URL (relative to the server's base), with size and SHA-1 hash."""
    return {"contentType": document.content_type, "url": f"Binary/{binary_id(report_pk, version, document.n)}",
            "size": len(document.data), "hash": base64.b64encode(hashlib.sha1(document.data).digest()).decode("ascii"),
            "title": DOCUMENT_TITLE}


def referenced(doc: dict[str, Any]) -> dict[str, Any]:
    """An RP reference (OBX value type RP) as an Attachment, typed when RP-3/RP-4 say what it points to.

    Its ``url`` is the pointer as received (never fetched by the engine) only when the pointer is an absolute
    URI (RFC 3986: a scheme, then ``:``). RP-1 is often a key in the system RP-2 names (``DOC123``), not a
    URL: given as ``url`` it would resolve against this server's base, and a pointer such as
    ``Binary/report-7-1-1`` would show a client another report's document as this one's. Such a pointer is
    named in the ``title`` instead, with the application it belongs to.
    """
    kind = _content_type(doc, fallback=False)
    typed = {"contentType": kind} if kind else {}
    pointer = str(doc["reference"]).strip()
    if _ABSOLUTE_URI.match(pointer):
        return typed | {"url": pointer, "title": DOCUMENT_TITLE}
    application = str(doc.get("application", "")).split("&")[0].strip()
    where = f" in {application}" if application else ""
    return typed | {"title": f"{DOCUMENT_TITLE}: reference {pointer}{where}"}


def report_text(report_pk: int | str, version: int, text: str) -> dict[str, Any]:
    """The Attachment of a report version's text: inline ``data`` up to :data:`INLINE_TEXT_BYTES`, else by URL
    (document 0 of the version, :func:`attachment`)."""
    data = text.encode()
    if len(data) <= INLINE_TEXT_BYTES:
        return {"contentType": _TEXT_TYPE, "data": base64.b64encode(data).decode("ascii"), "title": REPORT_TITLE}
    return attachment(report_pk, version, Document(0, _TEXT_TYPE, data)) | {"title": REPORT_TITLE}


def presented(report_pk: int | str, version: int, attachments: str) -> list[dict[str, Any]]:
    """A report version's documents and references as Attachments, in the order received: an ED document by
    its ``Binary`` URL (:func:`attachment`), an RP reference by its own URL (:func:`referenced`)."""
    out: list[dict[str, Any]] = []
    for n, doc in enumerate(json.loads(attachments or "[]"), 1):
        if doc.get("reference"):
            out.append(referenced(doc))
        elif (document := _document(n, doc)) is not None:
            out.append(attachment(report_pk, version, document))
    return out


def read_document(conn: Connection, res_id: str) -> tuple[str, Document] | None:
    """(the DiagnosticReport id, the document) a Binary id names, or None if unknown or its report is not served."""
    parsed = parse_id(res_id)
    if parsed is None:
        return None
    report_pk, version, n = parsed
    r = fhir_resources.c
    served = select(r.id).where(r.res_type == "DiagnosticReport", r.res_id == str(report_pk)).exists()
    column = report_versions.c.text if n == 0 else report_versions.c.attachments
    stored = conn.execute(select(column).where(
        report_versions.c.report_pk == report_pk, report_versions.c.version == version, served)).scalar()
    if not stored:
        return None
    if n == 0:  # the report's text, served here only when too large to be inline (as its DiagnosticReport says)
        data = stored.encode()
        return (str(report_pk), Document(0, _TEXT_TYPE, data)) if len(data) > INLINE_TEXT_BYTES else None
    found = next((d for d in documents(stored) if d.n == n), None)
    return (str(report_pk), found) if found is not None else None


def inline(conn: Connection, resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` with each of its ``Binary/report-…`` attachments carrying its bytes as ``data`` instead of
    the URL (for a server that cannot fetch them from here: FHIR push). Only the report's own documents: an RP
    reference as received may read ``Binary/report-…`` too, naming another report's (another patient's)."""
    forms = resource.get("presentedForm")
    if not isinstance(forms, list):
        return resource
    out = []
    for form in forms:
        url = form.get("url", "") if isinstance(form, dict) else ""
        found = read_document(conn, url[len("Binary/"):]) if url.startswith("Binary/") else None
        if found is not None and found[0] == str(resource.get("id")):
            form = {k: v for k, v in form.items() if k != "url"}
            form["data"] = base64.b64encode(found[1].data).decode("ascii")
        out.append(form)
    return {**resource, "presentedForm": out}
