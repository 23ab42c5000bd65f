"""Orders: the lifecycle of requested procedures and their worklist steps (IHE RAD-2/3/4/13).

Each :class:`~engine.domain.records.OrderRecord` (one ORC/OBR or IPC group) is
one requested procedure with one Scheduled Procedure Step. ORC-1 + ORC-5 give
the step status through a site-editable code table (reference section 2);
an unknown combination is answered AE at ``ORC^n^1`` and changes nothing.
A follow-up finds its order by placer/filler number (engine.domain.order_identity);
a new order is imaging, positively non-imaging, or refused with AE 103 when its
modality cannot be determined (engine.domain.order_kind). What changed nothing
(a resent order, a cancel of a cancelled order, an ignored non-imaging order)
comes back as an :class:`Applied` with its reason, for the message's note.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, delete, select, update

from engine.config.models import StationRule
from engine.domain.accession import (
    AccessionPolicy,
    format_accession,
    next_sequence_value,
    resolve_accession,
)
from engine.domain.identity import resolved_order
from engine.domain.order_identity import find_orders, given_ids, identity_text
from engine.domain.order_kind import NonImaging, classify, describe, listed_as
from engine.domain.patients import PatientPolicy, ensure_patient, existing_patient
from engine.domain.records import OrderRecord
from engine.domain.tables import orders, procedure_steps, step_station_aes
from engine.domain.uids import derived_uid
from engine.errors import ConfigError, ErrorLocation, HL7ApplicationError
from engine.mapping.tables import load_table
from engine.store.fast import FastInsert

__all__ = [
    "CONTROL_TABLE",
    "DEFAULT_CONTROL_TABLE",
    "Applied",
    "OrderPolicy",
    "apply_order",
    "load_control_table",
    "map_priority",
    "order_key",
    "split_start",
    "station_for",
    "step_status",
]

ControlTable = Mapping[tuple[str, str], str]

#: The shipped control table's file name, as messages name it.
CONTROL_TABLE = "order_control_status.csv"

#: ORC-1 + ORC-5 → Scheduled Procedure Step Status (0040,0020): the dcm4chee default (reference §2).
DEFAULT_CONTROL_TABLE: dict[tuple[str, str], str] = {
    ("NW", "SC"): "SCHEDULED",
    ("NW", "IP"): "SCHEDULED",
    ("NW", ""): "SCHEDULED",
    ("XO", "SC"): "SCHEDULED",
    ("XO", "CM"): "COMPLETED",
    ("SC", "CM"): "COMPLETED",
    ("SC", "A"): "COMPLETED",
    ("SC", "IP"): "STARTED",  # status changes and filler cancels real RIS feeds send (tables 0119/0038)
    ("XO", "IP"): "STARTED",
    ("XO", ""): "",  # a change of content alone: the step keeps its status (an XO that creates: SCHEDULED)
    ("SC", "SC"): "SCHEDULED",
    ("SC", "CA"): "CANCELED",
    ("SC", "DC"): "DISCONTINUED",
    ("OC", "CA"): "CANCELED",
    ("OC", ""): "CANCELED",
    ("CA", "CA"): "CANCELED",
    ("CA", ""): "CANCELED",  # real RIS cancels often leave ORC-5 empty
    ("DC", "CA"): "DISCONTINUED",
    ("DC", ""): "DISCONTINUED",
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
#: Step statuses an NW or XO whose ORC-5 says scheduled leaves as they are (engine.domain.orders._update).
_UNDERWAY = frozenset({"STARTED", "COMPLETED"})
_ORC7 = ErrorLocation("ORC", 1, 7)


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
    non_imaging_codes: NonImaging = field(default_factory=NonImaging)
    control_table_name: str = CONTROL_TABLE
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


@dataclass(frozen=True, slots=True)
class Applied:
    """What one order record did: the steps it touched, and why nothing changed if so."""

    step_pks: tuple[int, ...] = ()
    changed: bool = True
    note: str = ""
    created: bool = False  # a new order: nothing stored (no study, no report) can refer to it yet


def step_status(
    table: ControlTable, control: str, status: str, table_name: str = CONTROL_TABLE, sequence: int = 1
) -> str:
    """The step status for ORC-1/ORC-5; AE 103 at ORC^n^1 naming the fields and table on a miss."""
    try:
        return table[(control, status)]
    except KeyError:
        shown = f"ORC-5 {status!r}" if status else "ORC-5 empty"
        raise HL7ApplicationError(
            103, f"ORC-1 {control!r} with {shown} is not in {table_name}", ErrorLocation("ORC", sequence, 1)
        ) from None


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


def order_key(record: OrderRecord, sequence: int = 1) -> str:
    """The key a new order is stored under (its derived Study Instance UID is made from it)."""
    number = record.placer_order_number or record.filler_order_number or record.accession_number
    if not number:
        raise HL7ApplicationError(
            101, "order has no placer, filler or accession number", ErrorLocation("ORC", sequence, 2)
        )
    return "|".join(
        (record.issuer, number, record.requested_procedure_id, record.scheduled_procedure_step_id)
    )


#: The record's JSON as ``model_dump_json`` writes it, without that method's keyword plumbing
#: (~3x its cost on pydantic 2.14 for the same bytes): every new order hashes its record.
_TO_JSON = OrderRecord.__pydantic_serializer__.to_json


def _hash(record: OrderRecord) -> str:
    """SHA-256 of the record's JSON: stored with the order, compared when the order comes again.

    The bytes must stay those of ``record.model_dump_json()``: the hashes of stored orders
    were made from them, and a resent identical order must still change nothing. So ``cleared``
    (newer than those hashes) is left out unless the order nulls something.
    """
    return hashlib.sha256(_TO_JSON(record, exclude=None if record.cleared else _NO_NULLS)).hexdigest()


_NO_NULLS = {"cleared"}


#: Descriptions and code meanings (LO) are cut to 64 characters, as the worklist can carry no more;
#: identifiers are never cut (too long: AE 102, engine.domain.handlers).
_LO = 64


#: Order fields a message may delete with the HL7 null ``""`` (HL7 v2.5.1 2.5.3) -> (table, column).
#: Identifiers, codes, modality, start and status are never cleared: a null there is an empty field.
_CLEARABLE: dict[str, tuple[str, str]] = {
    "requested_procedure_description": ("orders", "requested_procedure_description"),
    "requesting_physician": ("orders", "requesting_physician"),
    "referring_physician_name": ("orders", "referring_physician_name"),
    "admission_id": ("orders", "admission_id"),
    "scheduled_procedure_step_description": ("procedure_steps", "description"),
    "scheduled_performing_physician_name": ("procedure_steps", "performing_physician_name"),
    "scheduled_procedure_step_location": ("procedure_steps", "location"),
}


def _nulls(record: OrderRecord) -> list[str]:
    """The clearable fields ``record`` sent as HL7 null (and gave no value)."""
    return [name for name in _CLEARABLE if name in record.cleared and not getattr(record, name)]


def _deleted(before: str, record: OrderRecord) -> str:
    """The order's ``cleared`` column after ``record``: its nulls added, the fields it gives removed."""
    names = {n for n in before.split() if not getattr(record, n, "")} | set(_nulls(record))
    return " ".join(n for n in _CLEARABLE if n in names)


def _order_values(record: OrderRecord) -> dict[str, Any]:
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
        "content_hash": _hash(record),
        "cleared": _deleted("", record),
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
        "description": record.scheduled_procedure_step_description[:_LO],
        "protocol_code_value": code.code_value if code else "",
        "protocol_coding_scheme": code.coding_scheme_designator if code else "",
        "protocol_code_meaning": code.code_meaning[:_LO] if code else "",
        "performing_physician_name": record.scheduled_performing_physician_name,
        "updated_at": now,
    }
    return values, aes


# The statements every new order runs: compiled once, executed on the raw cursor (engine.store.fast).
_INSERT_ORDER = FastInsert(orders)
_INSERT_STEP = FastInsert(procedure_steps)
_INSERT_STATION = FastInsert(step_station_aes)
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


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """Only what the follow-up carries: a field it leaves out never erases a stored value."""
    return {k: v for k, v in values.items() if v not in ("", None)}


_TABLES = {"orders": orders, "procedure_steps": procedure_steps}
_STORED = select(orders.c.cleared, *(_TABLES[t].c[c].label(n) for n, (t, c) in _CLEARABLE.items())).select_from(
    orders.join(procedure_steps, procedure_steps.c.order_pk == orders.c.id))


def _stored_nulls(conn: Connection, record: OrderRecord, found: Any) -> tuple[str, list[str]]:
    """The order's ``cleared`` column, and the fields ``record`` nulls that the order or step holds (for
    the note). Read on a content update only (not by find_orders: the reports handler shares it)."""
    row = conn.execute(_STORED.where(procedure_steps.c.id == found.step_pk)).one()
    return str(row.cleared), [n for n in _nulls(record) if getattr(row, n)]


def _cleared_columns(record: OrderRecord, table: str) -> dict[str, str]:
    """"" for each column of ``table`` the record deletes."""
    return {_CLEARABLE[n][1]: "" for n in _nulls(record) if _CLEARABLE[n][0] == table}


def _update_content(
    conn: Connection, record: OrderRecord, found: Any, policy: OrderPolicy, now: datetime
) -> list[str]:
    """NW resent / XO: write the fields the message gives, blank those it sends as HL7 null, keep the others.

    Returns the fields it blanked that held a value (for the message's note).
    """
    before, blanked = _stored_nulls(conn, record, found)
    accession = "" if policy.accession_policy == "always_generate" else record.accession_number  # ours stays
    order_values = _given(
        {**_order_values(record), "accession_number": accession,
         "requested_procedure_id": given_ids(record)[0], "study_instance_uid": record.study_instance_uid}
    )  # fmt: skip
    order_values.update(_cleared_columns(record, "orders"), cleared=_deleted(before, record))
    conn.execute(update(orders).where(orders.c.id == found.order_pk).values(updated_at=now, **order_values))
    values, aes = _step_values(record, policy, now)
    if not record.scheduled_start:  # split_start would put "now" in place of the stored start
        for key in ("start_date", "start_time", "start_datetime"):
            values.pop(key)
    step_values = {**_given(values), **_cleared_columns(record, "procedure_steps")}
    conn.execute(update(procedure_steps).where(procedure_steps.c.id == found.step_pk).values(**step_values))
    if aes:
        start = values.get("start_datetime") or conn.execute(
            select(procedure_steps.c.start_datetime).where(procedure_steps.c.id == found.step_pk)
        ).scalar_one()
        _set_station_aes(conn, int(found.step_pk), aes, start)
    return blanked


def _update(
    conn: Connection, record: OrderRecord, found: Any, status: str, policy: OrderPolicy, now: datetime
) -> Applied:
    """Apply a follow-up to one stored step; unchanged (with the reason) when it changes nothing."""
    step_pk = int(found.step_pk)
    content = record.order_control in _CONTENT_CONTROLS
    status = status or found.status  # "": the table keeps the step's status (XO with ORC-5 empty)
    kept = ""
    if content and status == "SCHEDULED" and found.status in _UNDERWAY:
        # An NW replayed by an interface engine after the exam (or an XO still saying SC) put a COMPLETED
        # step back on the modality's worklist: an exam done, offered again. Content may change; status not.
        kept = (f"order {identity_text(record)}: {record.order_control} with ORC-5 '{record.order_status}' left the "
                f"step {found.status} (an exam started or done is not scheduled again)")
        status = found.status
    if found.status == status and (not content or found.content_hash == _hash(record)):
        why = "resent, identical to the stored order" if content else f"the step is already {status}"
        return Applied((step_pk,), False, kept or f"order {identity_text(record)}: {record.order_control} changed "
                                                  f"nothing ({why})")
    if content:
        blanked = _update_content(conn, record, found, policy, now)
        if blanked:
            cleared = (f"order {identity_text(record)}: {', '.join(blanked)} cleared (sent as HL7 null \"\")")
            kept = "\n".join(filter(None, (kept, cleared)))
    else:
        conn.execute(
            update(orders)
            .where(orders.c.id == found.order_pk)
            .values(order_control=record.order_control, order_status=record.order_status, updated_at=now)
        )
    conn.execute(update(procedure_steps).where(procedure_steps.c.id == step_pk).values(status=status, updated_at=now))
    return Applied((step_pk,), note=kept)


def _same_patient(
    conn: Connection, record: OrderRecord, found: Sequence[Any], policy: OrderPolicy,
    known: Mapping[tuple[str, str], int] | None, sequence: int,
) -> None:
    """An NW or XO finds its order by number; its PID must name that order's patient (or one merged into it).

    Otherwise AE 205 at ORC^n^2, nothing changed: an NW reusing another patient's order number
    was answered AA while the worklist kept the first patient (found by the hl7corpus campaign).
    Status follow-ups (CA, DC, SC ...) are found by their order number alone, whatever PID they
    carry (issue #11: real RIS cancels carry little more than ORC).
    """
    if not record.patient_id or record.order_control not in _CONTENT_CONTROLS:
        return
    identity = (record.patient_id, record.issuer)
    pk = (known or {}).get(identity) or existing_patient(conn, *identity, policy.patients)
    if any(row.patient_pk == pk for row in found):
        return
    raise HL7ApplicationError(
        205, f"order {identity_text(record)} is stored for another patient than the one PID-3 names: a "
        "follow-up cannot move it (merge the patients with A40, or cancel and order again)",
        ErrorLocation("ORC", sequence, 2),
    )


def _new_order(record: OrderRecord, policy: OrderPolicy, sequence: int) -> Applied | None:
    """None when the order is imaging and may be created; else the ignored outcome or an AE.

    A follow-up (CA, DC, SC ...) for an order that is not stored is AE 204 unless the
    site lists it as non-imaging: its modality is beside the point, the order is missing.
    """
    kind = classify(record, policy.imaging_modalities, policy.non_imaging_codes)
    section = record.diagnostic_service_section or record.modality
    if kind == "non_imaging":
        codes = policy.non_imaging_codes
        what = f"not an imaging order ({listed_as(record, codes)} in {codes.table})"
        if policy.non_imaging == "reject":
            raise HL7ApplicationError(103, what, ErrorLocation("OBR", sequence, 24))
        return Applied((), False, f"order {identity_text(record)}: {what}, ignored (orders.non_imaging: ignore)")
    if record.order_control not in _CONTENT_CONTROLS:
        raise HL7ApplicationError(204, f"unknown order {identity_text(record)}", ErrorLocation("ORC", sequence, 2))
    if kind == "imaging":
        return None
    field_no = 24 if section else 4  # an OBR-24 nobody knows, or no OBR-24 and an unknown code
    raise HL7ApplicationError(
        103, f"order {identity_text(record)}: {describe(record, policy.non_imaging_codes)}",
        ErrorLocation("OBR", sequence, field_no),
    )


def apply_order(
    conn: Connection,
    record: OrderRecord,
    policy: OrderPolicy,
    now: datetime,
    message_id: int | None = None,
    known_patients: Mapping[tuple[str, str], int] | None = None,
    sequence: int = 1,
) -> Applied:
    """Apply one order record (the ``sequence``-th ORC group of its message, for ERR locations).

    A follow-up applies to the stored steps its identity names, whatever its modality;
    a new order is created only when it is imaging. ``known_patients`` maps
    (patient_id, issuer) to the live pk of patients this message has already upserted,
    which spares their lookup. The patient is the one the record's PID-3 repetitions name
    under ``patients.trusted_issuers`` (engine.domain.identity), as for the PID's patient record.
    """
    record = resolved_order(record, policy.patients.trusted_issuers)
    status = step_status(policy.control_table, record.order_control, record.order_status,
                         policy.control_table_name, sequence)
    key = order_key(record, sequence)
    found = find_orders(conn, record, by_accession=policy.accession_policy != "always_generate",
                        follow_up=record.order_control not in _CONTENT_CONTROLS)
    if found:
        _same_patient(conn, record, found, policy, known_patients, sequence)
        results = [_update(conn, record, row, status, policy, now) for row in found]
        changed = [r for r in results if r.changed]
        note = "\n".join(dict.fromkeys(r.note for r in changed if r.note)) if changed else results[0].note
        return Applied(tuple(r.step_pks[0] for r in results), bool(changed), note)
    refused = _new_order(record, policy, sequence)
    if refused is not None:
        return refused
    if not record.patient_id:  # ORM^O01 without PID: a follow-up is found above; a new order needs its patient
        raise HL7ApplicationError(101, f"order {identity_text(record)} is new and names no patient (PID-3.1 empty "
                                  "or no PID segment)", ErrorLocation("PID", 1, 3, 1))
    identity = (record.patient_id, record.issuer)
    patient_pk = (known_patients or {}).get(identity) or ensure_patient(conn, *identity, policy.patients, now)
    return Applied((_create(conn, record, key, status or "SCHEDULED", patient_pk, policy, now, message_id),),
                   created=True)
