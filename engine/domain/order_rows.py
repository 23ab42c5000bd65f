"""The rows of an order and its steps: the values each column gets, and the writes (engine.domain.orders).

What an order record (or one of its step views, engine.domain.steps) puts into ``orders``,
``procedure_steps`` and ``step_station_aes``: priorities mapped to DICOM, the start split into DA/TM
(reference section 3), the station chosen, descriptions cut to LO, and the content hash a resent
order is recognised by. engine.domain.orders decides which rows change; this module writes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, delete, select, update

from engine.config.models import StationRule
from engine.domain.order_identity import given_ids
from engine.domain.records import OrderRecord
from engine.domain.tables import orders, procedure_steps, step_station_aes
from engine.errors import ErrorLocation, HL7ApplicationError
from engine.store.fast import FastInsert

if TYPE_CHECKING:
    from engine.domain.orders import OrderPolicy

__all__ = [
    "CLEARABLE",
    "PRIORITIES",
    "cleared_after",
    "content_hash",
    "given",
    "insert_step",
    "map_priority",
    "null_fields",
    "order_values",
    "set_station_aes",
    "set_status",
    "split_start",
    "station_for",
    "step_values",
    "update_order_row",
    "update_step",
]

_ORC7 = ErrorLocation("ORC", 1, 7)

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
    if not (text.isascii() and text.isdigit()) or len(text) < 8 or len(text) > 14 or len(text) % 2:
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


#: The record's JSON as ``model_dump_json`` writes it, without that method's keyword plumbing
#: (~3x its cost on pydantic 2.14 for the same bytes): every new order hashes its record.
_TO_JSON = OrderRecord.__pydantic_serializer__.to_json


def content_hash(record: OrderRecord) -> str:
    """SHA-256 of the record's JSON: stored with the order, compared when the order comes again.

    The bytes must stay those of ``record.model_dump_json()`` as earlier versions wrote it, which
    had no ``steps`` and no ``cleared``: the hashes of stored orders were made from them, and a resent
    identical order must still change nothing. An order without either is hashed without its key.
    """
    left_out = {name for name in ("steps", "cleared") if not getattr(record, name)}
    return hashlib.sha256(_TO_JSON(record, exclude=left_out or None)).hexdigest()


#: Descriptions and code meanings (LO) are cut to 64 characters, as the worklist can carry no more;
#: identifiers are never cut (too long: AE 102, engine.domain.handlers).
_LO = 64


#: Order fields a message may delete with the HL7 null ``""`` (HL7 v2.5.1 2.5.3) -> (table, column).
#: Identifiers, codes, modality, start and status are never cleared: a null there is an empty field.
CLEARABLE: dict[str, tuple[str, str]] = {
    "requested_procedure_description": ("orders", "requested_procedure_description"),
    "requesting_physician": ("orders", "requesting_physician"),
    "referring_physician_name": ("orders", "referring_physician_name"),
    "admission_id": ("orders", "admission_id"),
    "scheduled_procedure_step_description": ("procedure_steps", "description"),
    "scheduled_performing_physician_name": ("procedure_steps", "performing_physician_name"),
    "scheduled_procedure_step_location": ("procedure_steps", "location"),
}
_TABLES = {"orders": orders, "procedure_steps": procedure_steps}


def null_fields(record: OrderRecord, table: str) -> list[str]:
    """The clearable fields of ``table`` that ``record`` sent as HL7 null (and gave no value)."""
    return [n for n, (t, _) in CLEARABLE.items() if t == table and n in record.cleared and not getattr(record, n)]


def cleared_after(before: str, record: OrderRecord) -> str:
    """The order's ``cleared`` column after ``record``: its nulls added, the fields it gives removed."""
    names = {n for n in before.split() if not getattr(record, n, "")}
    names.update(n for n in CLEARABLE if n in record.cleared and not getattr(record, n))
    return " ".join(n for n in CLEARABLE if n in names)


def _blank(conn: Connection, record: OrderRecord, table: str, pk: int) -> tuple[dict[str, str], list[str], str]:
    """The columns of row ``pk`` of ``table`` that ``record`` deletes ("" each), the fields among them that
    held a value (for the message's note) and, for ``orders``, the row's ``cleared`` column as stored."""
    names = null_fields(record, table)
    stored = _TABLES[table]
    columns: list[ColumnElement[Any]] = [stored.c[CLEARABLE[n][1]].label(n) for n in names]
    if table == "orders":
        columns.append(orders.c.cleared)
    if not columns:
        return {}, [], ""
    row = conn.execute(select(*columns).where(stored.c.id == pk)).one()
    before = str(row.cleared) if table == "orders" else ""
    return {CLEARABLE[n][1]: "" for n in names}, [n for n in names if getattr(row, n)], before


def order_values(record: OrderRecord) -> dict[str, Any]:
    """The ``orders`` columns an order record gives (not its keys, accession or UID, set on creation)."""
    code = record.requested_procedure_code
    return {
        "placer_order_number": record.placer_order_number,
        "placer_order_namespace": record.placer_order_namespace,
        "filler_order_number": record.filler_order_number,
        "filler_order_namespace": record.filler_order_namespace,
        "issuer_of_accession_number": record.issuer_of_accession_number,
        "priority": map_priority(record.priority),
        "requested_procedure_description": record.requested_procedure_description[:_LO],
        "procedure_code_value": code.code_value if code else "",
        "procedure_coding_scheme": code.coding_scheme_designator if code else "",
        "procedure_code_meaning": code.code_meaning[:_LO] if code else "",
        "requesting_physician": record.requesting_physician,
        "referring_physician_name": record.referring_physician_name,
        "admission_id": record.admission_id,
        "order_control": record.order_control,
        "order_status": record.order_status,
        "content_hash": content_hash(record),
        "cleared": cleared_after("", record),
    }


def step_values(
    record: OrderRecord, policy: OrderPolicy, now: datetime
) -> tuple[dict[str, Any], list[str]]:
    """The ``procedure_steps`` columns of one step (an order record or a step view), and its station AE titles."""
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
        "description": record.scheduled_procedure_step_description[:_LO],
        "protocol_code_value": code.code_value if code else "",
        "protocol_coding_scheme": code.coding_scheme_designator if code else "",
        "protocol_code_meaning": code.code_meaning[:_LO] if code else "",
        "performing_physician_name": record.scheduled_performing_physician_name,
        "updated_at": now,
    }
    return values, aes


# The statements every new order runs: compiled once, executed on the raw cursor (engine.store.fast).
# The statements every new step runs: compiled once, executed on the raw cursor (engine.store.fast).
_INSERT_STEP = FastInsert(procedure_steps)
_INSERT_STATION = FastInsert(step_station_aes)


def set_station_aes(conn: Connection, step_pk: int, aes: Sequence[str], start: str, new: bool = False) -> None:
    """The rows of ``step_station_aes`` for step ``step_pk`` (replaced unless ``new``), one per distinct AE title."""
    if not new:
        conn.execute(delete(step_station_aes).where(step_station_aes.c.step_pk == step_pk))
    for ae in dict.fromkeys(a.strip() for a in aes if a.strip()):
        _INSERT_STATION.execute(conn, {"step_pk": step_pk, "ae_title": ae, "start_datetime": start})


def insert_step(
    conn: Connection, order_pk: int, view: OrderRecord, sps_id: str, status: str, policy: OrderPolicy, now: datetime
) -> int:
    """Store one step of order ``order_pk`` with SPS ID ``sps_id`` and ``status``; its pk."""
    values, aes = step_values(view, policy, now)
    step_pk = _INSERT_STEP.execute(
        conn, {"order_pk": order_pk, "sps_id": sps_id, "status": status, "created_at": now, **values}
    )
    set_station_aes(conn, step_pk, aes, values["start_datetime"], new=True)
    return step_pk


def given(values: dict[str, Any]) -> dict[str, Any]:
    """Only what the follow-up carries: a field it leaves out never erases a stored value."""
    return {k: v for k, v in values.items() if v not in ("", None)}


def update_order_row(
    conn: Connection, record: OrderRecord, order_pk: int, policy: OrderPolicy, now: datetime
) -> list[str]:
    """The order-level fields an NW resent or an XO gives, blanking those it sends as HL7 null; the others
    are kept. Returns the fields it blanked that held a value (for the message's note)."""
    accession = "" if policy.accession_policy == "always_generate" else record.accession_number  # ours stays
    values = given(
        {**order_values(record), "accession_number": accession,
         "requested_procedure_id": given_ids(record)[0], "study_instance_uid": record.study_instance_uid}
    )  # fmt: skip
    blanks, blanked, before = _blank(conn, record, "orders", order_pk)
    values.update(blanks, cleared=cleared_after(before, record))
    conn.execute(update(orders).where(orders.c.id == order_pk).values(updated_at=now, **values))
    return blanked


def update_step(conn: Connection, view: OrderRecord, step_pk: int, policy: OrderPolicy, now: datetime) -> list[str]:
    """Write the step fields ``view`` gives to stored step ``step_pk``, blank those it sends as HL7 null,
    keep the others. Returns the fields it blanked that held a value (for the message's note)."""
    values, aes = step_values(view, policy, now)
    if not view.scheduled_start:  # split_start would put "now" in place of the stored start
        for key in ("start_date", "start_time", "start_datetime"):
            values.pop(key)
    blanks, blanked, _ = _blank(conn, view, "procedure_steps", step_pk)
    conn.execute(update(procedure_steps).where(procedure_steps.c.id == step_pk).values(**given(values), **blanks))
    if aes:
        start = values.get("start_datetime") or conn.execute(
            select(procedure_steps.c.start_datetime).where(procedure_steps.c.id == step_pk)
        ).scalar_one()
        set_station_aes(conn, step_pk, aes, start)
    return blanked


def set_status(conn: Connection, step_pk: int, status: str, now: datetime) -> None:
    """Set step ``step_pk``'s Scheduled Procedure Step Status."""
    conn.execute(update(procedure_steps).where(procedure_steps.c.id == step_pk).values(status=status, updated_at=now))
