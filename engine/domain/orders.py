"""Orders: the lifecycle of requested procedures and their worklist steps (IHE RAD-2/3/4/13).

Each :class:`~engine.domain.records.OrderRecord` (one ORC/OBR or IPC group) is
one requested procedure with one Scheduled Procedure Step. ORC-1 + ORC-5 give
the step status through a site-editable code table (reference section 2);
an unknown combination is answered AE at ``ORC^1^1`` and changes nothing.
An order is found again by its key (placer or filler number, or the given
accession, plus the given Requested Procedure ID and SPS ID), so a resent
identical order changes nothing and XO/CA/DC act on the same entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, delete, select, update

from engine.config.models import StationRule
from engine.domain.accession import (
    AccessionPolicy,
    format_accession,
    next_sequence_value,
    resolve_accession,
)
from engine.domain.patients import PatientPolicy, ensure_patient
from engine.domain.records import OrderRecord
from engine.domain.tables import orders, procedure_steps, step_station_aes
from engine.domain.uids import derived_uid
from engine.errors import ConfigError, ErrorLocation, HL7ApplicationError
from engine.mapping.tables import load_table
from engine.store.fast import FastInsert, FastStatement, first_row

__all__ = [
    "DEFAULT_CONTROL_TABLE",
    "OrderPolicy",
    "apply_order",
    "is_imaging",
    "load_control_table",
    "map_priority",
    "order_key",
    "split_start",
    "station_for",
    "step_status",
]

ControlTable = Mapping[tuple[str, str], str]

#: ORC-1 + ORC-5 → Scheduled Procedure Step Status (0040,0020): the dcm4chee default (reference §2).
DEFAULT_CONTROL_TABLE: dict[tuple[str, str], str] = {
    ("NW", "SC"): "SCHEDULED",
    ("NW", "IP"): "SCHEDULED",
    ("NW", ""): "SCHEDULED",
    ("XO", "SC"): "SCHEDULED",
    ("XO", "CM"): "COMPLETED",
    ("SC", "CM"): "COMPLETED",
    ("SC", "A"): "COMPLETED",
    ("CA", "CA"): "CANCELED",
    ("DC", "CA"): "DISCONTINUED",
}

#: HL7 priority (ORC-7.6 / TQ1-9) → RequestedProcedurePriority (0040,1003).
PRIORITIES: dict[str, str] = {
    "S": "STAT",
    "A": "HIGH",
    "P": "HIGH",
    "C": "HIGH",
    "R": "ROUTINE",
    "T": "MEDIUM",
}
_DICOM_PRIORITIES = frozenset({"STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW"})
#: Controls that carry the order's content; the others only change the status.
_CONTENT_CONTROLS = frozenset({"NW", "XO"})
_ORC1 = ErrorLocation("ORC", 1, 1)
_ORC2 = ErrorLocation("ORC", 1, 2)
_ORC7 = ErrorLocation("ORC", 1, 7)
_OBR24 = ErrorLocation("OBR", 1, 24)


@dataclass(frozen=True, slots=True)
class OrderPolicy:
    """``orders:`` settings as the domain uses them."""

    control_table: ControlTable = field(default_factory=lambda: dict(DEFAULT_CONTROL_TABLE))
    accession_policy: AccessionPolicy = "generate_if_missing"
    accession_pattern: str = "{date:%Y%m%d}{seq:06d}"
    accession_sequence: str = "accession"
    uid_root: str = "2.25"
    station_rules: tuple[StationRule, ...] = ()
    imaging_modalities: frozenset[str] = frozenset()
    non_imaging: Literal["ignore", "reject"] = "ignore"
    timezone: tzinfo | None = None
    patients: PatientPolicy = field(default_factory=PatientPolicy)


def load_control_table(path: Path | None) -> dict[tuple[str, str], str]:
    """Read the ``order_control,order_status,sps_status`` code table (the same file the
    mappings use, read by the same loader); None or a missing file: the default."""
    if path is None or not path.exists():
        return dict(DEFAULT_CONTROL_TABLE)
    try:
        index = load_table(path).index(2, "sps_status")
    except (ConfigError, KeyError, ValueError) as exc:
        raise ConfigError([f"{path}:1: need columns order_control, order_status, sps_status ({exc})"]) from exc
    return {(k[0].strip(), k[1].strip()): v.strip() for k, v in index.items()}


def step_status(table: ControlTable, control: str, status: str) -> str:
    """The step status for ORC-1/ORC-5; AE 103 at ORC^1^1 when the table has no such row."""
    try:
        return table[(control, status)]
    except KeyError:
        raise HL7ApplicationError(
            103, f"unsupported order control {control}/{status or '(empty)'}", _ORC1
        ) from None


def is_imaging(record: OrderRecord, modalities: frozenset[str]) -> bool:
    """An order is for imaging if its modality (OBR-24 / IPC-5) is a DICOM modality listed."""
    if not modalities:
        return True
    return bool({record.modality, record.diagnostic_service_section} & modalities)


def station_for(rules: Sequence[StationRule], record: OrderRecord) -> tuple[list[str], str]:
    """(AE titles, station name): IPC-9 if given, else the first matching site rule."""
    if record.scheduled_station_ae_title:
        return record.scheduled_station_ae_title.split("\\"), record.scheduled_station_name
    code = record.requested_procedure_code.code_value if record.requested_procedure_code else ""
    wanted = {
        "modality": record.modality,
        "procedure_code": code,
        "location": record.scheduled_procedure_step_location,
    }
    for rule in rules:
        if all(getattr(rule, k) in (None, v) for k, v in wanted.items()):
            return list(rule.ae_titles), rule.station_name or record.scheduled_station_name
    return [], record.scheduled_station_name


def split_start(value: str, now: datetime) -> tuple[str, str, str]:
    """DT ``YYYYMMDD[HHMM[SS]]`` (or empty: ``now``) → (DA, TM, 14-digit datetime)."""
    text = (
        value.split(".")[0].split("+")[0].split("-")[0] if value else now.strftime("%Y%m%d%H%M%S")
    )
    if not text.isdigit() or len(text) < 8 or len(text) > 14 or len(text) % 2:
        raise HL7ApplicationError(102, f"invalid start date/time {value!r}", _ORC7)
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:8]))  # strptime costs ~10x more
    except ValueError:
        raise HL7ApplicationError(102, f"invalid start date {value!r}", _ORC7) from None
    full = text.ljust(14, "0")
    return full[:8], full[8:], full


def map_priority(value: str) -> str:
    """An HL7 priority code or a DICOM priority → RequestedProcedurePriority."""
    upper = value.strip().upper()
    return upper if upper in _DICOM_PRIORITIES else PRIORITIES.get(upper, "")


def order_key(record: OrderRecord) -> str:
    """What makes a resent or changed order find the same entry."""
    number = record.placer_order_number or record.filler_order_number or record.accession_number
    if not number:
        raise HL7ApplicationError(101, "order has no placer, filler or accession number", _ORC2)
    return "|".join(
        (record.issuer, number, record.requested_procedure_id, record.scheduled_procedure_step_id)
    )


def _hash(record: OrderRecord) -> str:
    return hashlib.sha256(record.model_dump_json().encode()).hexdigest()


def _order_values(record: OrderRecord) -> dict[str, Any]:
    code = record.requested_procedure_code
    return {
        "placer_order_number": record.placer_order_number,
        "filler_order_number": record.filler_order_number,
        "issuer_of_accession_number": record.issuer_of_accession_number,
        "priority": map_priority(record.priority),
        "requested_procedure_description": record.requested_procedure_description,
        "procedure_code_value": code.code_value if code else "",
        "procedure_coding_scheme": code.coding_scheme_designator if code else "",
        "procedure_code_meaning": code.code_meaning if code else "",
        "requesting_physician": record.requesting_physician,
        "referring_physician_name": record.referring_physician_name,
        "admission_id": record.admission_id,
        "order_control": record.order_control,
        "order_status": record.order_status,
        "content_hash": _hash(record),
    }


def _step_values(
    record: OrderRecord, policy: OrderPolicy, now: datetime
) -> tuple[dict[str, Any], list[str]]:
    aes, station_name = station_for(policy.station_rules, record)
    local_now = now.astimezone(policy.timezone) if policy.timezone else now
    date, time, full = split_start(record.scheduled_start, local_now)
    code = record.scheduled_protocol_code
    values = {
        "modality": record.modality,
        "scheduled_station_ae_title": "\\".join(aes),
        "scheduled_station_name": station_name,
        "location": record.scheduled_procedure_step_location,
        "start_date": date,
        "start_time": time,
        "start_datetime": full,
        "description": record.scheduled_procedure_step_description,
        "protocol_code_value": code.code_value if code else "",
        "protocol_coding_scheme": code.coding_scheme_designator if code else "",
        "protocol_code_meaning": code.code_meaning if code else "",
        "performing_physician_name": record.scheduled_performing_physician_name,
        "updated_at": now,
    }
    return values, aes


# The statements every new order runs: compiled once, executed on the raw cursor (engine.store.fast).
_INSERT_ORDER = FastInsert(orders)
_INSERT_STEP = FastInsert(procedure_steps)
_INSERT_STATION = FastInsert(step_station_aes)
_FIND = FastStatement(
    select(
        orders.c.id.label("order_pk"),
        orders.c.content_hash,
        procedure_steps.c.id.label("step_pk"),
        procedure_steps.c.status,
    )
    .join(procedure_steps, procedure_steps.c.order_pk == orders.c.id)
    .where(orders.c.order_key == bindparam("key"))
    .order_by(procedure_steps.c.id)
    .limit(1)
)


def _set_station_aes(conn: Connection, step_pk: int, aes: Sequence[str], start: str, new: bool = False) -> None:
    if not new:
        conn.execute(delete(step_station_aes).where(step_station_aes.c.step_pk == step_pk))
    for ae in dict.fromkeys(a.strip() for a in aes if a.strip()):
        _INSERT_STATION.execute(conn, {"step_pk": step_pk, "ae_title": ae, "start_datetime": start})


def _new_accession(conn: Connection, policy: OrderPolicy, now: datetime) -> str:
    seq = next_sequence_value(conn, policy.accession_sequence)
    today = (now.astimezone(policy.timezone) if policy.timezone else now).date()
    return format_accession(policy.accession_pattern, seq, today)


def _create(
    conn: Connection,
    record: OrderRecord,
    key: str,
    status: str,
    patient_pk: int,
    policy: OrderPolicy,
    now: datetime,
    message_id: int | None,
) -> int:
    accession = resolve_accession(
        policy.accession_policy, record.accession_number, lambda: _new_accession(conn, policy, now)
    )
    rp_id = record.requested_procedure_id or accession
    study_uid = record.study_instance_uid or derived_uid(policy.uid_root, "study", key)
    order_pk = _INSERT_ORDER.execute(conn, {
        "patient_pk": patient_pk, "order_key": key, "accession_number": accession, "requested_procedure_id": rp_id,
        "study_instance_uid": study_uid, "message_id": message_id, "created_at": now, "updated_at": now,
        **_order_values(record),
    })  # fmt: skip
    values, aes = _step_values(record, policy, now)
    step_pk = _INSERT_STEP.execute(conn, {
        "order_pk": order_pk, "sps_id": record.scheduled_procedure_step_id or rp_id, "status": status,
        "created_at": now, **values,
    })  # fmt: skip
    _set_station_aes(conn, step_pk, aes, values["start_datetime"], new=True)
    return step_pk


def _update(
    conn: Connection,
    record: OrderRecord,
    found: Any,
    status: str,
    policy: OrderPolicy,
    now: datetime,
) -> int:
    step_pk = int(found.step_pk)
    if record.order_control in _CONTENT_CONTROLS:
        order_values = _order_values(record)
        for name, value in (
            ("accession_number", record.accession_number),
            ("requested_procedure_id", record.requested_procedure_id),
            ("study_instance_uid", record.study_instance_uid),
        ):
            if value:
                order_values[name] = value
        conn.execute(
            update(orders)
            .where(orders.c.id == found.order_pk)
            .values(updated_at=now, **order_values)
        )
        values, aes = _step_values(record, policy, now)
        conn.execute(
            update(procedure_steps).where(procedure_steps.c.id == step_pk).values(**values)
        )
        _set_station_aes(conn, step_pk, aes, values["start_datetime"])
    else:
        conn.execute(
            update(orders)
            .where(orders.c.id == found.order_pk)
            .values(
                order_control=record.order_control, order_status=record.order_status, updated_at=now
            )
        )
    conn.execute(
        update(procedure_steps)
        .where(procedure_steps.c.id == step_pk)
        .values(status=status, updated_at=now)
    )
    return step_pk


def _find(conn: Connection, key: str) -> Any:
    return first_row(_FIND, conn, {"key": key})


def apply_order(
    conn: Connection,
    record: OrderRecord,
    policy: OrderPolicy,
    now: datetime,
    message_id: int | None = None,
    known_patients: Mapping[tuple[str, str], int] | None = None,
) -> int | None:
    """Apply one order record; return its step pk, or None when a non-imaging order is ignored.

    ``known_patients`` maps (patient_id, issuer) to the live pk of patients this message
    has already upserted, which spares their lookup.
    """
    status = step_status(policy.control_table, record.order_control, record.order_status)
    if not is_imaging(record, policy.imaging_modalities):
        if policy.non_imaging == "reject":
            raise HL7ApplicationError(
                103, f"not an imaging order: {record.modality or '(no modality)'}", _OBR24
            )
        return None
    key = order_key(record)
    found = _find(conn, key)
    if found is None:
        if record.order_control not in _CONTENT_CONTROLS:
            raise HL7ApplicationError(204, f"unknown order {key.split('|')[1]}", _ORC2)
        identity = (record.patient_id, record.issuer)
        patient_pk = (known_patients or {}).get(identity) or ensure_patient(conn, *identity, policy.patients, now)
        return _create(conn, record, key, status, patient_pk, policy, now, message_id)
    if found.content_hash == _hash(record) and found.status == status:
        return int(found.step_pk)  # a resent identical order changes nothing
    return _update(conn, record, found, status, policy, now)
