"""The ``reports`` handler: report records → versions, and ORU^R01 to the EHR(s) (engine.handlers door).

On a reports channel it applies every ``report`` record of an ORU^R01
(engine.domain.reports) and enqueues one ORU^R01 per receiver
(``reports.receivers`` in engine.yaml) for each new version whose order is
known. On an orders channel, listed after ``orders``, it attaches the reports
that were waiting for the orders the message carries and sends them on. An
ORU^R01 without OBR is AE 101; one that the channel's mapping turns into no
report record is refused AR 200 by the channel (nothing applies it). Notes (resent unchanged, kept for an unknown order,
attached) go to the message (``radbridge messages show``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection

from engine.config.models import ChannelConfig, EngineConfig
from engine.domain.records import OrderRecord, ReportRecord
from engine.domain.report_out import Receiver, oru_messages
from engine.domain.report_status import STATUS_TABLE, load_status_table
from engine.domain.reports import ReportPolicy, apply_report, attach_pending, report_identity, report_keys
from engine.errors import ConfigError, ErrorLocation, HL7ApplicationError
from engine.handlers import InboundContext, Outbound, register_handler

__all__ = ["ReportsHandler", "receivers", "register", "report_policy"]


def report_policy(engine: EngineConfig) -> ReportPolicy:
    """The domain's view of ``reports:``."""
    cfg = engine.reports
    path = cfg.status_table or engine.mappings_dir / "tables" / STATUS_TABLE
    return ReportPolicy(load_status_table(path), cfg.unknown_order)


def receivers(engine: EngineConfig) -> tuple[Receiver, ...]:
    """The enabled receivers with their compiled mappings; ConfigError for a mapping of the wrong kind.

    Every receiver's mapping is checked, also of a receiver that is off: turning it on must
    not be a surprise.
    """
    if not engine.reports.receivers:
        return ()
    from engine.mapping import load_mappings

    compiled = load_mappings(engine.mappings_dir, timezone=engine.timezone)
    out, problems = [], []
    for r in engine.reports.receivers:
        mapping = compiled.get(r.mapping)
        if mapping is None:
            continue  # reported with its line by engine.config.references
        if mapping.source != "record" or mapping.target != "hl7v2":
            problems.append(f"{mapping.path}: reports.receivers {r.name}: mapping {r.mapping} must read records"
                            f" and write hl7v2 (it reads {mapping.source}, writes {mapping.target})")
            continue
        if r.enabled:
            out.append(Receiver(r.name, r.target, mapping))
    if problems:
        raise ConfigError(problems)
    return tuple(out)


def _validate(model: type[Any], data: dict[str, Any], segment: str, sequence: int) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HL7ApplicationError(101, f"{segment} record invalid: {exc.errors()[0]['msg']}",
                                  ErrorLocation(segment, sequence)) from exc


@dataclass(slots=True)
class ReportsHandler:
    """ORU^R01 report records; on an orders channel, the reports waiting for its orders."""

    policy: ReportPolicy
    receivers: tuple[Receiver, ...] = ()
    name: str = "reports"

    def apply(self, conn: Connection, ctx: InboundContext) -> list[Outbound]:
        """Apply every report record; attach waiting reports to every order record; return the ORU^R01s."""
        if ctx.message.message_code == "ORU":
            self._require(ctx)
        now = ctx.received_at
        out: list[Outbound] = []
        reports = (d for d in ctx.records if d.get("record") == "report")
        obx_before = 0  # ERR-2 names an OBX by its place in the message, not in its OBR group
        for sequence, data in enumerate(reports, start=1):
            record: ReportRecord = _validate(ReportRecord, data, "OBR", sequence)
            applied = apply_report(conn, record, self.policy, now, ctx.message_id, sequence, obx_before)
            obx_before += len(record.lines)
            patient_id, accession = record.patient_id, record.accession_number
            if not patient_id and applied.report_pk is not None:  # an ORU without PID: listed under its order's
                found_id, found_accession = report_keys(conn, applied.report_pk)
                patient_id, accession = patient_id or found_id, accession or found_accession
            ctx.note(applied.changed, applied.note, patient_id=patient_id, accession_number=accession)
            if applied.changed and applied.attached and applied.report_pk is not None:
                out += oru_messages(conn, applied.report_pk, self.receivers, now)
        for data in ctx.records:
            if data.get("record") == "order":
                out += self._attach(conn, ctx, _validate(OrderRecord, data, "ORC", 1), now)
        return out

    def _attach(self, conn: Connection, ctx: InboundContext, order: OrderRecord, now: datetime) -> list[Outbound]:
        out: list[Outbound] = []
        for report_pk in attach_pending(conn, order, now):
            ctx.note(True, f"report {report_pk} for order {report_identity(order)} was waiting: attached and sent on")
            out += oru_messages(conn, report_pk, self.receivers, now)
        return out

    @staticmethod
    def _require(ctx: InboundContext) -> None:
        """An ORU without OBR carries no report: AE 101 (one the mapping ignores is the channel's AR 200)."""
        if ctx.message.segment("OBR") is None:
            raise HL7ApplicationError(101, f"{ctx.message.message_type} has no OBR segment", ErrorLocation("OBR", 1))


def _reports(engine: EngineConfig, channel: ChannelConfig) -> ReportsHandler:
    return ReportsHandler(report_policy(engine), receivers(engine))


def register() -> None:
    """Register ``reports`` (idempotent)."""
    register_handler("reports", _reports)


register()
