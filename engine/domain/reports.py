"""Reports: radiology reports received from the reporting system, kept as versions (ORU^R01 in).

Each :class:`~engine.domain.records.ReportRecord` (one OBR group) is one
version of the report of one order. The order is found by its placer or
filler number (engine.domain.order_identity, as follow-up orders are), else
by accession number, else by Study Instance UID. OBR-25 goes through the site
table (engine.domain.report_status). What the reporting system sends again
unchanged changes nothing (the reason comes back for the message's note); any
other content is a new version, numbered from 1, the earlier ones kept. A
final report followed by another final or a correction is sent on as a
correction (C); a preliminary cannot replace a final (AE). A report for an
order the engine does not know is kept, waiting, and attached when the order
arrives (:func:`attach_pending`), or refused with AE 204 by policy.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, func, select, update

from engine.domain.order_identity import find_orders
from engine.domain.records import OrderRecord, ReportLine, ReportRecord
from engine.domain.report_documents import document_bytes
from engine.domain.report_status import DEFAULT_STATUS_TABLE, StatusTable, read_derived, read_status
from engine.domain.report_tables import report_versions, reports
from engine.domain.tables import orders, patients
from engine.errors import ErrorLocation, HL7ApplicationError
from engine.store.fast import FastInsert, FastStatement, all_rows, first_row

__all__ = ["TEXT_TYPES", "ReportApplied", "ReportPolicy", "apply_report", "attach_pending", "report_identity",
           "waiting_count"]

#: OBX-2 value types whose OBX-5 is report text (HL7 v2.5.1 2.A: TX, FT, ST).
TEXT_TYPES = frozenset({"TX", "FT", "ST"})
#: OBX-2 value type of a document (encapsulated data, 2.A.24): kept as received and sent on.
DOCUMENT_TYPE = "ED"
#: OBX-2 value type of a reference to a document (reference pointer, 2.A.65): kept as received and sent on.
#: The engine never follows it (no outbound connection on a sender's say-so); the EHR and FHIR clients may.
REFERENCE_TYPE = "RP"
_FINAL = frozenset({"F", "C"})

# Every report runs these: compiled once, executed on the raw cursor (engine.store.fast).
_REPORT_COLUMNS = (reports.c.id, reports.c.order_pk, reports.c.version, reports.c.result_status,
                   reports.c.placer_order_namespace, reports.c.filler_order_namespace)
_ORDER_BY_UID = FastStatement(select(orders.c.id.label("order_pk"), orders.c.accession_number)
                              .where(orders.c.study_instance_uid == bindparam("number")))
_ORDER_PATIENT = FastStatement(select(orders.c.patient_pk).where(orders.c.id == bindparam("order_pk")))
_BY_ORDER = FastStatement(select(*_REPORT_COLUMNS).where(reports.c.order_pk == bindparam("order_pk"))
                          .order_by(reports.c.id).limit(1))
_ANY_WAITING = FastStatement(select(reports.c.id).where(reports.c.order_pk.is_(None)).limit(1))


def _waiting_by(column: Any) -> FastStatement:
    return FastStatement(select(*_REPORT_COLUMNS).where(reports.c.order_pk.is_(None), column == bindparam("number"))
                         .order_by(reports.c.id))


_WAITING = {
    "placer": _waiting_by(reports.c.placer_order_number),
    "filler": _waiting_by(reports.c.filler_order_number),
    "accession": _waiting_by(reports.c.accession_number),
    "study": _waiting_by(reports.c.study_instance_uid),
}
_VERSIONS = FastStatement(
    select(report_versions.c.version, report_versions.c.content_hash, report_versions.c.result_status)
    .where(report_versions.c.report_pk == bindparam("report_pk"))
)
_CURRENT = ("version", "status", "result_status", "interpreter", "observation_datetime", "conclusion", "text",
            "issued", "updated_at")
_SET_CURRENT = FastStatement(
    update(reports).where(reports.c.id == bindparam("report_pk"))
    .values({name: bindparam(f"new_{name}") for name in _CURRENT})
)
_INSERT_REPORT = FastInsert(reports)
_INSERT_VERSION = FastInsert(report_versions)


@dataclass(frozen=True, slots=True)
class ReportPolicy:
    """``reports:`` settings as the domain uses them."""

    status_table: StatusTable = DEFAULT_STATUS_TABLE
    unknown_order: Literal["keep", "reject"] = "keep"


@dataclass(frozen=True, slots=True)
class ReportApplied:
    """What one report record did: its report and version, whether it changed, and why not."""

    report_pk: int | None
    version: int
    changed: bool = True
    attached: bool = False  # its order is known: the EHR gets it now
    note: str = ""


@dataclass(frozen=True, slots=True)
class _Content:
    result_status: str  # as the table reads OBR-25
    fhir_status: str
    text: str
    conclusion: str
    attachments: str = ""  # JSON list of the ED documents and RP references as received; "" without any
    derived: str = ""  # the note saying the status was derived from OBX-11 (OBR-25 empty)
    left_out: tuple[str, ...] = ()  # the OBX that are not the report's content, and why (messages show)

    @staticmethod
    def of(record: ReportRecord, table: StatusTable, sequence: int, obx_before: int = 0) -> _Content:
        """The version's content: the TX/FT/ST lines, else the group's NTE text; its ED documents.

        A report of a document alone (a PDF in OBX ED) or of NTE text alone is a report; one with
        neither text nor document (and not a cancel) is AE 101. An OBX whose OBX-11 retracts it (D, W) or
        that points at DICOM images (RP) is not content: left out and said so. ``obx_before`` counts the
        OBX of the message's earlier OBR groups (ERR-2 names an OBX by its place in the message).
        """
        derived = ""
        if record.status.strip():
            meaning = read_status(table, record.status, sequence)
        else:  # HL7 v2.5.1 7.4.1.25 allows OBR-25 empty; some reporting systems give the status per OBX only
            meaning, derived = read_derived(table, [line.result_status for line in record.lines], sequence)
        current: list[ReportLine] = []
        left_out: list[tuple[int, str, bool]] = []  # (OBX sequence in the message, why, an image reference)
        unreadable: list[str] = []
        for n, line in enumerate(record.lines, obx_before + 1):
            why, image = _not_content(line)
            if why:
                left_out.append((n, why, image))
                continue
            current.append(line)
            if line.value_type.strip().upper() == DOCUMENT_TYPE and line.data and \
                    document_bytes(line.encoding, line.data) is None:
                unreadable.append(f"OBX^{n} ED data is not readable as {line.encoding.strip() or 'its encoding'} "
                                  "(ED-4, HL7 table 0299): kept and sent on to the EHR as received; the FHIR "
                                  "DiagnosticReport cannot offer it (no presentedForm entry)")
        grouped: dict[str, list[str]] = {}  # one line per reason: "OBX^1, OBX^2, OBX^3 left out ..."
        for n, why, _ in left_out:
            grouped.setdefault(why, []).append(f"OBX^{n}")
        said = tuple(f"{', '.join(where)} left out of the report: {why}" for why, where in grouped.items())
        said += tuple(unreadable)
        lines = [replace_line_breaks(line) for line in current if line.value_type.strip().upper() in TEXT_TYPES]
        text = "\n".join(line.text for line in lines)
        if not any(line.text.strip() for line in record.lines if line.value_type.strip().upper() in TEXT_TYPES):
            # no OBX text (not even retracted): the NTE lines are the report (beside OBX text they are comments)
            lines, text = [], "\n".join(_breaks(c.text) for c in record.comments if c.text.strip())
        documents = [doc for line in current if (doc := _attachment(line))]
        if not text.strip() and not documents and meaning.result_status != "X":
            images = [n for n, _, image in left_out if image]
            where = ErrorLocation("OBX", images[0], 5) if images else ErrorLocation("OBR", sequence)
            raise HL7ApplicationError(101, "report has no text and no document (no OBX with value type TX, FT, "
                                      "ST, ED or RP, no NTE)" + "".join(f"; {s}" for s in said), where)
        conclusion = "\n".join(line.text for line in lines if line.section == "impression")
        return _Content(meaning.result_status, meaning.fhir_status, text, conclusion,
                        json.dumps(documents) if documents else "", derived, said)


def _breaks(text: str) -> str:
    """CR LF and CR as line breaks: ``\\X0D\\``, ``\\X0D0A\\`` (hex escapes some reporting systems write for
    one) decode to them, and a CR left in the text ends the segment in the ORU^R01 to the EHR."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def replace_line_breaks(line: ReportLine) -> ReportLine:
    """``line`` with its text's line breaks as LF (:func:`_breaks`); the line itself when it has none other."""
    return line if "\r" not in line.text else line.model_copy(update={"text": _breaks(line.text)})


#: OBX-11 codes (HL7 table 0085) that take the OBX out of the report: what the reporting system means by them.
RETRACTED = {
    "D": "OBX-11 D (delete the OBX, HL7 table 0085): not in the report text, documents or the ORU^R01 to the EHR",
    "W": "OBX-11 W (posted as wrong, HL7 table 0085: the earlier value was wrong): not in the report text, "
         "documents or the ORU^R01 to the EHR",
}
#: RP-3 type of data / RP-4 subtype naming DICOM (HL7 tables 0191, 0291): the pointer is to images.
_DICOM = "DICOM"


#: A DICOM UID (PS3.5 9.1: digits and dots, no leading zeros) of four or more components: what an OBX such as
#: ``113014^DICOM Study^DCM`` or ``^SR Instance UID`` carries (IHE RAD results, the dcm4che SR/CDA reports).
_UID = re.compile(r"[0-2](\.(0|[1-9][0-9]*)){3,}")


def _not_content(line: ReportLine) -> tuple[str, bool]:
    """(why the OBX is not part of the report, whether it points at DICOM images); ("", False) when it is."""
    retracted = RETRACTED.get(line.result_status.strip().upper(), "")
    if retracted:
        return retracted, False
    value = line.text.strip()
    if line.value_type.strip().upper() in TEXT_TYPES and len(value) <= 64 and _UID.fullmatch(value):
        return ("a DICOM UID (OBX-3 study, series or SR instance UID), which names the images, not report text: "
                "not kept"), True
    if line.value_type.strip().upper() == REFERENCE_TYPE and _DICOM in (line.media_type.strip().upper(),
                                                                       line.media_subtype.strip().upper()):
        return (f"RP {line.media_type}^{line.media_subtype} points at DICOM images (an image reference, not the "
                "report or a document of it): not kept"), True
    return "", False


def _attachment(line: ReportLine) -> dict[str, str]:
    """A document the line carries (ED) or points to (RP), as received; {} for neither.

    An ED entry keeps its key set of earlier versions (their digests stay the same); an RP entry says so.
    """
    kind = line.value_type.strip().upper()
    if kind == DOCUMENT_TYPE and line.data:
        return {"media_type": line.media_type, "media_subtype": line.media_subtype, "encoding": line.encoding,
                "data": line.data}
    if kind == REFERENCE_TYPE and line.reference.strip():
        return {"value_type": REFERENCE_TYPE, "reference": line.reference, "application": line.application,
                "media_type": line.media_type, "media_subtype": line.media_subtype}
    return {}


def report_identity(record: ReportRecord | Any) -> str:
    """``placer P1^EHR, filler F1`` (else accession or study UID): numbers, never PHI."""
    parts = [
        f"{label} {number}" + (f"^{namespace}" if namespace else "")
        for label, number, namespace in (
            ("placer", record.placer_order_number, record.placer_order_namespace),
            ("filler", record.filler_order_number, record.filler_order_namespace),
            ("accession", record.accession_number, ""),
            ("study", record.study_instance_uid, ""),
        )
        if number
    ]
    return ", ".join(parts[:2]) or "(no number)"


def _probe(record: ReportRecord, accession: str = "") -> OrderRecord:
    return OrderRecord(
        order_control="RE", patient_id=record.patient_id, placer_order_number=record.placer_order_number,
        placer_order_namespace=record.placer_order_namespace, filler_order_number=record.filler_order_number,
        filler_order_namespace=record.filler_order_namespace, accession_number=accession,
    ) if not accession else OrderRecord(order_control="RE", patient_id=record.patient_id, accession_number=accession)


def _find_order(conn: Connection, record: ReportRecord, sequence: int) -> int | None:
    """The order's pk: by placer/filler number, else accession, else Study Instance UID; AE 204 if ambiguous."""
    rows: Sequence[Any] = []
    if record.placer_order_number or record.filler_order_number:
        rows = find_orders(conn, _probe(record))
    if not rows and record.accession_number:
        rows = find_orders(conn, _probe(record, record.accession_number))
    if not rows and record.study_instance_uid:
        rows = all_rows(_ORDER_BY_UID, conn, {"number": record.study_instance_uid})
    pks = sorted({int(r.order_pk) for r in rows})
    if len(pks) > 1 and record.accession_number:
        same = {int(r.order_pk) for r in rows if r.accession_number == record.accession_number}
        pks = sorted(same) or pks
    if len(pks) > 1:
        raise HL7ApplicationError(204, f"report {report_identity(record)} matches {len(pks)} orders",
                                  ErrorLocation("OBR", sequence, 2))
    return pks[0] if pks else None


def _waiting(conn: Connection, record: ReportRecord | OrderRecord) -> list[Any]:
    """Reports waiting for their order that share the placer (namespace allowing), filler, accession or UID.

    Costs one indexed probe when nothing waits at all, the usual case.
    """
    if first_row(_ANY_WAITING, conn, {}) is None:
        return []
    found: dict[int, Any] = {}
    keys = (("placer", record.placer_order_number, "placer_order_namespace", record.placer_order_namespace),
            ("filler", record.filler_order_number, "filler_order_namespace", record.filler_order_namespace),
            ("accession", record.accession_number, "", ""), ("study", record.study_instance_uid, "", ""))
    for key, number, ns_column, namespace in keys:
        if not number:
            continue
        for row in all_rows(_WAITING[key], conn, {"number": number}):
            stored = getattr(row, ns_column) if ns_column else ""
            if not namespace or not stored or stored == namespace:
                found.setdefault(int(row.id), row)
    return [found[pk] for pk in sorted(found)]


def _existing(conn: Connection, record: ReportRecord, order_pk: int | None) -> Any:
    if order_pk is not None:
        row = first_row(_BY_ORDER, conn, {"order_pk": order_pk})
        if row is not None:
            return row
    waiting = _waiting(conn, record)
    return waiting[0] if waiting else None


def _hash(record: ReportRecord, content: _Content) -> str:
    data = [content.result_status, content.fhir_status, content.text, content.conclusion, record.interpreter,
            record.interpreter_id, record.observation_datetime, record.status_datetime]
    if content.attachments:  # not in the list otherwise: the digests of stored text-only versions stay the same
        data.append(content.attachments)
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def _order_patient(conn: Connection, order_pk: int | None) -> int | None:
    if order_pk is None:
        return None
    row = first_row(_ORDER_PATIENT, conn, {"order_pk": order_pk})
    return None if row is None else int(row.patient_pk)


def _version_values(record: ReportRecord, content: _Content, result: str, fhir: str, digest: str,
                    message_id: int | None, now: datetime) -> dict[str, Any]:
    return {
        "status": fhir, "result_status": result, "reported_status": record.status[:32],
        "interpreter": record.interpreter[:324], "interpreter_id": record.interpreter_id[:64],
        "observation_datetime": record.observation_datetime[:26], "status_datetime": record.status_datetime[:26],
        "conclusion": content.conclusion, "text": content.text, "attachments": content.attachments,
        "content_hash": digest, "message_id": message_id,
        "issued": now,
    }  # fmt: skip


def _current(values: dict[str, Any], version: int, now: datetime) -> dict[str, Any]:
    """The reports row's copy of its current version."""
    keys = ("status", "result_status", "interpreter", "observation_datetime", "conclusion", "text", "issued")
    return {"version": version, "updated_at": now, **{k: values[k] for k in keys}}


def _create(conn: Connection, record: ReportRecord, order_pk: int | None, values: dict[str, Any],
            now: datetime) -> int:
    code = record.procedure_code
    row = {
        "order_pk": order_pk, "patient_pk": _order_patient(conn, order_pk), "patient_id": record.patient_id[:64],
        "issuer": record.issuer[:64], "placer_order_number": record.placer_order_number[:64],
        "placer_order_namespace": record.placer_order_namespace[:64],
        "filler_order_number": record.filler_order_number[:64],
        "filler_order_namespace": record.filler_order_namespace[:64],
        "accession_number": record.accession_number[:64], "study_instance_uid": record.study_instance_uid[:64],
        "procedure_code_value": code.code_value[:64] if code else "",
        "procedure_coding_scheme": code.coding_scheme_designator[:64] if code else "",
        "procedure_code_meaning": code.code_meaning[:64] if code else "", "created_at": now,
        **_current(values, 1, now),
    }  # fmt: skip
    report_pk = _INSERT_REPORT.execute(conn, row)
    _INSERT_VERSION.execute(conn, {"report_pk": report_pk, "version": 1, **values})
    return report_pk


def _outgoing(content: _Content, earlier: set[str]) -> tuple[str, str]:
    """(OBR-25 to send, FHIR status): a final after a final is a correction (reference: C resends)."""
    if content.result_status == "F" and earlier & _FINAL:
        return "C", "amended" if content.fhir_status == "final" else content.fhir_status
    return content.result_status, content.fhir_status


def apply_report(
    conn: Connection,
    record: ReportRecord,
    policy: ReportPolicy,
    now: datetime,
    message_id: int | None = None,
    sequence: int = 1,
    obx_before: int = 0,
) -> ReportApplied:
    """Store one report record (the ``sequence``-th OBR of its message) as a new version, or say why not.

    A status derived from OBX-11 (OBR-25 empty) and each OBX left out of the report are said in the note,
    whatever else the record did. ``obx_before``: the OBX of the message's earlier OBR groups.
    """
    content = _Content.of(record, policy.status_table, sequence, obx_before)
    applied = _apply(conn, record, content, policy, now, message_id, sequence)
    said = [f"report {report_identity(record)}: {s}" for s in (content.derived, *content.left_out) if s]
    if not said:
        return applied
    return replace(applied, note="\n".join(filter(None, (*said, applied.note))))


def _apply(conn: Connection, record: ReportRecord, content: _Content, policy: ReportPolicy, now: datetime,
           message_id: int | None, sequence: int) -> ReportApplied:
    order_pk = _find_order(conn, record, sequence)
    existing = _existing(conn, record, order_pk)
    who = f"report {report_identity(record)}"
    if existing is None and order_pk is None and policy.unknown_order == "reject":
        raise HL7ApplicationError(204, f"{who}: unknown order (reports.unknown_order: reject)",
                                  ErrorLocation("OBR", sequence, 2))
    if existing is None and order_pk is None and not record.patient_id:  # nothing to keep it under
        raise HL7ApplicationError(101, f"{who}: no such order, and no patient to keep the report for until it "
                                  "arrives (PID-3.1 empty or no PID segment)", ErrorLocation("PID", 1, 3, 1))
    digest = _hash(record, content)
    if existing is None:
        result, fhir = _outgoing(content, set())
        pk = _create(conn, record, order_pk, _version_values(record, content, result, fhir, digest, message_id, now),
                     now)
        return ReportApplied(pk, 1, True, order_pk is not None, _waiting_note(who, order_pk))
    return _new_version(conn, record, content, digest, existing, order_pk, message_id, now, sequence)


def _waiting_note(who: str, order_pk: int | None) -> str:
    if order_pk is not None:
        return ""
    return f"{who}: no such order yet; report kept and sent on when the order arrives (reports.unknown_order: keep)"


def _new_version(conn: Connection, record: ReportRecord, content: _Content, digest: str, existing: Any,
                 order_pk: int | None, message_id: int | None, now: datetime, sequence: int) -> ReportApplied:
    pk = int(existing.id)
    earlier = {(v.version, v.content_hash, v.result_status) for v in all_rows(_VERSIONS, conn, {"report_pk": pk})}
    who = f"report {report_identity(record)}"
    same = [v for v, h, _ in earlier if h == digest]
    if same:
        return ReportApplied(pk, int(existing.version), False, existing.order_pk is not None,
                             f"{who}: resent, identical to version {same[0]} (current version {existing.version});"
                             " nothing changed")
    if content.result_status == "P" and existing.result_status in _FINAL:
        raise HL7ApplicationError(206, f"{who} is final (version {existing.version}); a preliminary report cannot"
                                  " replace it", ErrorLocation("OBR", sequence, 25))
    result, fhir = _outgoing(content, {r for _, _, r in earlier})
    version = int(existing.version) + 1
    values = _version_values(record, content, result, fhir, digest, message_id, now)
    _INSERT_VERSION.execute(conn, {"report_pk": pk, "version": version, **values})
    _SET_CURRENT.execute(conn, {"report_pk": pk, **{f"new_{k}": v for k, v in _current(values, version, now).items()}})
    if existing.order_pk is None and order_pk is not None:  # its order arrived meanwhile
        _attach(conn, [pk], order_pk, now)
    attached = existing.order_pk is not None or order_pk is not None
    return ReportApplied(pk, version, True, attached, "" if attached else _waiting_note(who, None))


def _attach(conn: Connection, report_pks: list[int], order_pk: int, now: datetime) -> None:
    conn.execute(update(reports).where(reports.c.id.in_(report_pks))
                 .values(order_pk=order_pk, patient_pk=_order_patient(conn, order_pk), updated_at=now))


def attach_pending(conn: Connection, record: OrderRecord, now: datetime) -> list[int]:
    """Attach the waiting reports an order (just applied) is the order of; their pks.

    One indexed probe when nothing waits (the common case on the order path).
    """
    waiting = [int(r.id) for r in _waiting(conn, record)]
    if not waiting:
        return []
    pks = sorted({int(r.order_pk) for r in find_orders(conn, record, by_accession=False)})
    if len(pks) != 1:
        return []
    _attach(conn, waiting, pks[0], now)
    return waiting


def waiting_count(conn: Connection) -> int:
    """Reports kept for an order the engine does not know yet."""
    return int(conn.execute(select(func.count()).select_from(reports).where(reports.c.order_pk.is_(None)))
               .scalar_one())


def report_keys(conn: Connection, report_pk: int) -> tuple[str, str]:
    """The patient id and accession number of a report: its order's patient and accession when it has one,
    else what the report named."""
    r, o, p = reports.c, orders.c, patients.c
    row = conn.execute(select(func.coalesce(p.patient_id, r.patient_id), func.coalesce(o.accession_number,
                                                                                        r.accession_number))
                       .select_from(reports).outerjoin(orders, r.order_pk == o.id)
                       .outerjoin(patients, r.patient_pk == p.id).where(r.id == report_pk)).first()  # fmt: skip
    return (str(row[0] or ""), str(row[1] or "")) if row else ("", "")
