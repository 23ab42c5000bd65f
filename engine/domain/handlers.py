"""The ``patients`` and ``orders`` handlers: mapped records → the domain (engine.handlers door).

A channel lists them in ``handlers:``; each gets the message's records
(``InboundContext.records``, dicts validated against engine.domain.records)
inside the channel's transaction. Records of other types are ignored, so
both handlers can run on one channel. Errors are HL7ApplicationError (AE
with an ERR location); the channel rolls back everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import Connection

from engine.config.models import ChannelConfig, EngineConfig
from engine.domain.orders import OrderPolicy, apply_order, load_control_table
from engine.domain.patients import (
    PatientPolicy,
    apply_patient_event,
    change_identifier,
    merge_patient,
)
from engine.domain.records import MergeRecord, OrderRecord, PatientRecord
from engine.errors import ErrorLocation, HL7ApplicationError
from engine.handlers import InboundContext, Outbound, register_handler

__all__ = [
    "OrdersHandler",
    "PatientsHandler",
    "order_policy",
    "patient_policy",
    "register",
]


def patient_policy(engine: EngineConfig) -> PatientPolicy:
    """The domain's view of ``patients:``."""
    cfg = engine.patients
    return PatientPolicy(tuple(cfg.trusted_issuers), cfg.merged_id_policy == "follow")


def order_policy(engine: EngineConfig, channel: str = "") -> OrderPolicy:
    """The domain's view of ``orders:`` for ``channel`` (non-imaging policy is per channel)."""
    cfg = engine.orders
    path = cfg.order_control_table or engine.mappings_dir / "tables" / "order_control_status.csv"
    return OrderPolicy(
        control_table=load_control_table(path),
        accession_policy=cfg.accession_policy,
        accession_pattern=cfg.accession_pattern,
        accession_sequence=cfg.accession_sequence,
        uid_root=cfg.uid_root,
        station_rules=tuple(cfg.station_rules),
        imaging_modalities=frozenset(cfg.imaging_modalities),
        non_imaging=cfg.non_imaging_by_channel.get(channel, cfg.non_imaging),
        timezone=ZoneInfo(engine.timezone),
        patients=patient_policy(engine),
    )


def _validate(model: type[Any], data: dict[str, Any], segment: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HL7ApplicationError(
            101, f"{segment} record invalid: {exc.errors()[0]['msg']}", ErrorLocation(segment, 1)
        ) from exc


_KNOWN = "patient_pks"


def _remember(ctx: InboundContext, rec: PatientRecord, policy: PatientPolicy, pk: int) -> None:
    """Note the live pk of the patient just upserted, under the identity an order looks up.

    With trusted issuers the upsert may pick another PID-3 repetition than the one an
    order record carries, so nothing is remembered and the order looks it up as before.
    """
    if not policy.trusted_issuers:
        ctx.shared.setdefault(_KNOWN, {})[(rec.patient_id, rec.issuer)] = pk


@dataclass(slots=True)
class PatientsHandler:
    """ADT: patient records (A01/A04/A05/A08/A31/A10/A11 …) and merge records (A40/A47)."""

    policy: PatientPolicy
    name: str = "patients"

    def apply(self, conn: Connection, ctx: InboundContext) -> list[Outbound]:
        """Apply every patient and merge record of ``ctx`` in order."""
        now = ctx.received_at  # one timestamp for everything this message changes
        for data in ctx.records:
            kind = data.get("record")
            if kind == "patient":
                patient: PatientRecord = _validate(PatientRecord, data, "PID")
                _remember(ctx, patient, self.policy, apply_patient_event(conn, patient, self.policy, now))
            elif kind == "merge":
                ctx.shared.pop(_KNOWN, None)  # a merge may move a patient remembered before it
                rec: MergeRecord = _validate(MergeRecord, data, "MRG")
                if rec.kind == "change_id":
                    change_identifier(conn, rec, now)
                else:
                    merge_patient(conn, rec, self.policy, now)
        return []


@dataclass(slots=True)
class OrdersHandler:
    """ORM^O01 / OMI^O23 / OMG^O19: each order record is a requested procedure and its step."""

    policy: OrderPolicy
    upsert_patients: bool = True  # off when the channel's "patients" handler already applies them
    name: str = "orders"

    def apply(self, conn: Connection, ctx: InboundContext) -> list[Outbound]:
        """Upsert the PID's patient (unless ``patients`` runs too), then apply every order record."""
        now = ctx.received_at
        for data in ctx.records:
            if self.upsert_patients and data.get("record") == "patient":
                rec = _validate(PatientRecord, data, "PID")
                pk = apply_patient_event(conn, rec.model_copy(update={"event": ""}), self.policy.patients, now)
                _remember(ctx, rec, self.policy.patients, pk)
        known = ctx.shared.get(_KNOWN)
        for data in ctx.records:
            if data.get("record") == "order":
                order = _validate(OrderRecord, data, "ORC")
                apply_order(conn, order, self.policy, now, ctx.message_id, known)
        return []


def _patients(engine: EngineConfig, channel: ChannelConfig) -> PatientsHandler:
    return PatientsHandler(patient_policy(engine))


def _orders(engine: EngineConfig, channel: ChannelConfig) -> OrdersHandler:
    return OrdersHandler(order_policy(engine, channel.name), upsert_patients="patients" not in channel.handlers)


def register() -> None:
    """Register ``patients`` and ``orders`` (idempotent)."""
    register_handler("patients", _patients)
    register_handler("orders", _orders)


register()
