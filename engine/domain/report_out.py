"""ORU^R01 out: one report version → one HL7 message per receiving EHR, built by its mapping file.

The engine gathers what a mapping may use (``header``, ``patient``,
``request``: the order with its placer and filler numbers exactly as the EHR
sent them, ``result``: the version with one line per OBX) and the receiver's
mapping (``mappings/report-to-oru.yaml``, record → hl7v2) writes the message.
The bytes are encoded in the character set the message itself declares in
MSH-18 (the EHR's; no MSH-18: ASCII, HL7 v2.5.1 2.15.9.18), characters it cannot
hold replaced by ``?``. The control id names the report and version, so every
resend of one version carries the same MSH-10 (idempotent at the receiver).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from engine.domain.records import (
    CodedValue,
    OruHeader,
    PatientRecord,
    ReportResult,
    RequestLine,
    ResultLine,
)
from engine.domain.report_tables import report_versions, reports
from engine.domain.tables import orders, patients, procedure_steps
from engine.errors import HL7Error
from engine.handlers import Outbound
from engine.hl7.ack import timestamp
from engine.hl7.charset import HL7_CHARSETS
from engine.hl7.er7 import Message, unescape
from engine.mapping.compiled import CompiledMapping
from engine.store.fast import FastStatement, first_row
from engine.store.schema import messages

__all__ = ["Receiver", "control_id", "encode_message", "oru_messages", "report_input"]


# One ORU^R01 runs these: compiled once, executed on the raw cursor (engine.store.fast).
_REPORT = FastStatement(select(
    reports.c.order_pk, reports.c.patient_pk, reports.c.patient_id, reports.c.version, reports.c.status,
    reports.c.result_status, reports.c.conclusion, reports.c.text).where(reports.c.id == bindparam("report_pk")))
_VERSION = FastStatement(select(
    report_versions.c.observation_datetime, report_versions.c.status_datetime, report_versions.c.interpreter,
    report_versions.c.interpreter_id, report_versions.c.attachments).where(
        report_versions.c.report_pk == bindparam("report_pk"), report_versions.c.version == bindparam("version")))
_ORDER = FastStatement(select(
    orders.c.id, orders.c.patient_pk, orders.c.message_id, orders.c.placer_order_number,
    orders.c.placer_order_namespace, orders.c.filler_order_number, orders.c.filler_order_namespace,
    orders.c.accession_number, orders.c.study_instance_uid, orders.c.requested_procedure_description,
    orders.c.procedure_code_value, orders.c.procedure_coding_scheme, orders.c.procedure_code_meaning,
    orders.c.requesting_physician).where(orders.c.id == bindparam("order_pk")))
_STEP = FastStatement(select(procedure_steps.c.modality, procedure_steps.c.start_datetime)
                      .where(procedure_steps.c.order_pk == bindparam("order_pk")).order_by(procedure_steps.c.id)
                      .limit(1))
_PATIENT = FastStatement(select(patients.c.patient_id, patients.c.issuer, patients.c.patient_name,
                                patients.c.birth_date, patients.c.sex).where(patients.c.id == bindparam("patient_pk")))
_MESSAGE_TEXT = FastStatement(select(messages.c.text).where(messages.c.id == bindparam("message_id")))


@dataclass(frozen=True, slots=True)
class Receiver:
    """One EHR: the outbox destination and the compiled mapping that writes its ORU^R01."""

    name: str
    destination: str
    mapping: CompiledMapping


def control_id(report_pk: int, version: int) -> str:
    """MSH-10 of a report version: the same for every resend of it (≤ 20 characters)."""
    return f"RB{report_pk}V{version}"


def _as_sent(conn: Connection, order: Any) -> tuple[list[str], list[str]]:
    """EI components of the placer and filler numbers as the order message carried them.

    The number and namespace are stored; the universal id and its type are read again
    from the stored order message (ORC-2/ORC-3, else OBR-2/OBR-3) so the EHR gets its
    own identifiers back unchanged.
    """
    row = first_row(_MESSAGE_TEXT, conn, {"message_id": order.message_id}) if order.message_id else None
    if row is None or not row.text:
        return [], []
    message = Message(_header_and_orders(row.text))
    found: list[list[str]] = []
    for field, number in ((2, order.placer_order_number), (3, order.filler_order_number)):
        found.append(next((
            [unescape(seg.value(field, 1, c), message.seps) for c in range(1, 5)]
            for name in ("ORC", "OBR") for seg in message.all(name)
            if number and unescape(seg.value(field, 1, 1), message.seps) == number), []))  # fmt: skip
    return found[0], found[1]


def _header_and_orders(text: str) -> str:
    """The stored message's MSH (its delimiters), ORC and OBR lines: all that :func:`_as_sent` reads.

    A stored message's segments end with CR (engine.hl7.er7.normalize_segment_breaks ran before it was
    stored); its other segments (patient, visit, notes) are not parsed for every report sent.
    """
    return "\r".join(line for line in text.split("\r") if line[:3] in _SENT_SEGMENTS)


_SENT_SEGMENTS = frozenset({"MSH", "ORC", "OBR"})


def _request(conn: Connection, order: Any) -> dict[str, Any]:
    placer, filler = _as_sent(conn, order)
    placer, filler = placer + [""] * 4, filler + [""] * 4
    step = first_row(_STEP, conn, {"order_pk": order.id})
    code = CodedValue(code_value=order.procedure_code_value, coding_scheme_designator=order.procedure_coding_scheme,
                      code_meaning=order.procedure_code_meaning)
    return RequestLine(
        placer_order_number=order.placer_order_number, placer_order_namespace=placer[1] or order.placer_order_namespace,
        placer_universal_id=placer[2], placer_universal_id_type=placer[3],
        filler_order_number=order.filler_order_number, filler_order_namespace=filler[1] or order.filler_order_namespace,
        filler_universal_id=filler[2], filler_universal_id_type=filler[3],
        accession_number=order.accession_number, study_instance_uid=order.study_instance_uid,
        requested_procedure_description=order.requested_procedure_description, procedure_code=code,
        modality=step.modality if step else "", scheduled_start=step.start_datetime if step else "",
        requesting_physician=order.requesting_physician,
    ).model_dump()


def _patient(conn: Connection, patient_pk: int | None) -> dict[str, Any]:
    row = first_row(_PATIENT, conn, {"patient_pk": patient_pk}) if patient_pk else None
    if row is None:
        return {}
    return PatientRecord(patient_id=row.patient_id, issuer=row.issuer, patient_name=row.patient_name,
                         birth_date=row.birth_date, sex=row.sex).model_dump()


def _result(report: Any, version: Any) -> dict[str, Any]:
    """The version as the mapping reads it: one line per text line, then one ED line per document and one RP
    line per reference (an attachment that says it is one)."""
    lines = [ResultLine(set_id="", text=line) for line in (report.text.split("\n") if report.text else [])]
    lines += [ResultLine(set_id="", **({"value_type": "ED"} | doc)) for doc in json.loads(version.attachments or "[]")]
    return ReportResult(
        version=str(report.version), result_status=report.result_status, fhir_status=report.status,
        observation_datetime=version.observation_datetime, status_datetime=version.status_datetime,
        interpreter=version.interpreter, interpreter_id=version.interpreter_id, conclusion=report.conclusion,
        text=report.text, lines=[line.model_copy(update={"set_id": str(n)}) for n, line in enumerate(lines, 1)],
    ).model_dump()


def report_input(conn: Connection, report_pk: int, now: datetime) -> tuple[dict[str, Any], str] | None:
    """What a report → HL7 mapping reads for the current version, and the ordering key (patient id).

    None when the report has no order yet (nothing goes to the EHR before its order is known).
    """
    report = first_row(_REPORT, conn, {"report_pk": report_pk})
    if report is None or report.order_pk is None:
        return None
    order = first_row(_ORDER, conn, {"order_pk": report.order_pk})
    version = first_row(_VERSION, conn, {"report_pk": report_pk, "version": report.version})
    patient = _patient(conn, report.patient_pk or order.patient_pk)
    header = OruHeader(control_id=control_id(report_pk, report.version), datetime=timestamp(now)).model_dump()
    data = {"header": header, "patient": patient, "request": _request(conn, order), "result": _result(report, version)}
    return data, str(patient.get("patient_id") or report.patient_id)


def encode_message(text: str) -> bytes:
    """The message's bytes in the charset its MSH-18 names (none: ASCII); unknown names: UTF-8."""
    msh = Message(text.split("\r", 1)[0]).msh  # only MSH-18 is read: the other segments are not parsed
    declared = msh.field(18).split("~")[0].strip().upper() if msh is not None else ""
    codec = HL7_CHARSETS.get(declared, "utf-8") if declared else "ascii"
    return text.encode(codec, errors="replace")


def oru_messages(conn: Connection, report_pk: int, receivers: Sequence[Receiver], now: datetime) -> list[Outbound]:
    """One ORU^R01 per receiver for the report's current version (none before its order is known).

    Raises HL7Error when a receiver's mapping refuses the report (a required value missing):
    the inbound message is then answered AE and nothing is stored, rather than the EHR
    silently missing a report.
    """
    if not receivers:
        return []
    found = report_input(conn, report_pk, now)
    if found is None:
        return []
    data, key = found
    out = []
    for receiver in receivers:
        try:
            built = receiver.mapping.apply_to(data, provenance=False).records
        except HL7Error as exc:
            exc.text = f"ORU^R01 for receiver {receiver.name} (mapping {receiver.mapping.name}): {exc.text}"
            raise
        for item in built:
            out.append(Outbound(receiver.destination, encode_message(item["message"]), ordering_key=key))
    return out
