"""Orders: the lifecycle of requested procedures and their worklist steps (IHE RAD-2/3/4/13).

Each :class:`~engine.domain.records.OrderRecord` (one ORC/OBR group) is one
requested procedure with its Scheduled Procedure Steps: one, or one per IPC of an
OMI^O23 (engine.domain.steps; the rows are written by engine.domain.order_rows). ORC-1 + ORC-5 give
the step status through a site-editable code table (reference section 2);
an unknown combination is answered AE at ``ORC^n^1`` and changes nothing.
A follow-up finds its order by placer/filler number (engine.domain.order_identity);
a new order is imaging, positively non-imaging, or refused with AE 103 when its
modality cannot be determined (engine.domain.order_kind). What changed nothing
(a resent order, a cancel of a cancelled order, an ignored non-imaging order)
comes back as an :class:`Applied` with its reason, for the message's note.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, select, update

from engine.config.models import StationRule
from engine.domain.accession import (
    AccessionPolicy,
    format_accession,
    next_sequence_value,
    resolve_accession,
)
from engine.domain.identity import resolved_order
from engine.domain.order_identity import ambiguous_correction, find_orders, identity_text
from engine.domain.order_kind import NonImaging, classify, describe, listed_as
from engine.domain.order_rows import (
    PRIORITIES,
    content_hash,
    insert_step,
    map_priority,
    order_values,
    set_status,
    split_start,
    station_for,
    update_order_row,
    update_step,
)
from engine.domain.patients import PatientPolicy, ensure_patient, existing_patient
from engine.domain.records import OrderRecord
from engine.domain.steps import NOT_STARTED, assign_sps_ids, check_distinct, step_views
from engine.domain.tables import orders, patients, procedure_steps
from engine.domain.uids import derived_uid
from engine.errors import ConfigError, ErrorLocation, HL7ApplicationError
from engine.mapping.tables import load_table
from engine.store.fast import FastInsert

__all__ = [
    "CONTROL_TABLE",
    "DEFAULT_CONTROL_TABLE",
    "PRIORITIES",
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
    ("DC", "DC"): "DISCONTINUED",
    ("DC", ""): "DISCONTINUED",
    ("OD", ""): "DISCONTINUED",  # the filler's "order discontinued", as OC is its cancel
    ("OD", "DC"): "DISCONTINUED",
    ("OD", "CA"): "DISCONTINUED",
    # The filler's answers (table 0119) a RIS sends on as its own: XX "changed as requested" is an XO,
    # CR "canceled as requested" a CA.
    ("XX", "SC"): "SCHEDULED",
    ("XX", "CM"): "COMPLETED",
    ("XX", "IP"): "STARTED",
    ("XX", ""): "",
    ("CR", "CA"): "CANCELED",
    ("CR", ""): "CANCELED",
}

#: Controls that carry the order's content; the others only change the status. XX ("changed as
#: requested", the filler's answer to an XO) carries the changed order as an XO does.
_CONTENT_CONTROLS = frozenset({"NW", "XO", "XX"})
#: Controls whose step list replaces the order's steps (RAD TF-2 4.13).
_REPLACING = frozenset({"XO", "XX"})
#: Step statuses an NW or XO whose ORC-5 says scheduled leaves as they are (engine.domain.orders._update).
_UNDERWAY = frozenset({"STARTED", "COMPLETED"})
#: Step statuses of an order the placer ended; kept by an NW/XO unless ``OrderPolicy.reopen_cancelled``.
_ENDED = frozenset({"CANCELED", "DISCONTINUED"})


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
    #: An NW/XO saying scheduled reschedules a CANCELED/DISCONTINUED step (``orders.reopen_cancelled``).
    reopen_cancelled: bool = False


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


# The statement every new order runs: compiled once, executed on the raw cursor (engine.store.fast).
_INSERT_ORDER = FastInsert(orders)


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
) -> tuple[tuple[int, ...], str]:
    """Store a new order and its steps (one, or one per IPC); their pks, and a note listing several."""
    accession = resolve_accession(
        policy.accession_policy, record.accession_number, lambda: _new_accession(conn, policy, now)
    )
    rp_id = record.requested_procedure_id or accession
    study_uid = record.study_instance_uid or derived_uid(policy.uid_root, "study", key)
    order_pk = _INSERT_ORDER.execute(conn, {
        "patient_pk": patient_pk, "order_key": key, "accession_number": accession, "requested_procedure_id": rp_id,
        "study_instance_uid": study_uid, "message_id": message_id, "created_at": now, "updated_at": now,
        **order_values(record),
    })  # fmt: skip
    views = step_views(record)
    ids = assign_sps_ids(views, rp_id)
    pairs = list(zip(views, ids, strict=True))
    pks = tuple(insert_step(conn, order_pk, view, sps_id, status, policy, now) for view, sps_id in pairs)
    if len(pks) < 2:
        return pks, ""
    listed = ", ".join(f"{sps_id} {view.modality or '(no modality)'}" for view, sps_id in pairs)
    return pks, f"order {identity_text(record)}: requested procedure {rp_id} scheduled as {len(pks)} steps: {listed}"


def _update_content(
    conn: Connection, record: OrderRecord, found: Any, policy: OrderPolicy, now: datetime, shared: bool = False
) -> list[str]:
    """NW resent / XO: write the fields the message gives, blank those it sends as HL7 null, keep the
    others (the step's too when ``shared``). Returns the fields blanked that held a value."""
    blanked = update_order_row(conn, record, int(found.order_pk), policy, now)
    if not shared:
        blanked += update_step(conn, record, int(found.step_pk), policy, now)
    return blanked


def cleared_note(record: OrderRecord, blanked: Sequence[str]) -> str:
    """The message's note for stored order values an explicit HL7 null blanked (field names, no values)."""
    return f"order {identity_text(record)}: {', '.join(blanked)} cleared (sent as HL7 null \"\")" if blanked else ""


def _update(
    conn: Connection, record: OrderRecord, found: Any, status: str, policy: OrderPolicy, now: datetime,
    shared: bool = False,
) -> Applied:
    """Apply a follow-up to one stored step; unchanged (with the reason) when it changes nothing.

    ``shared``: the step is one of several of its order (one per IPC) and the record, without IPCs,
    names none of them: its step fields (one OBR's modality, station ...) are not any one step's, so
    an NW or XO changes the order's fields and the step's status only.
    """
    step_pk = int(found.step_pk)
    content = record.order_control in _CONTENT_CONTROLS
    status = status or found.status  # "": the table keeps the step's status (XO with ORC-5 empty)
    kept = ""
    if content and status == "SCHEDULED":
        why = _kept_because(found.status, policy)
        if why:
            # An NW replayed by an interface engine after the exam (or an XO still saying SC) put a COMPLETED
            # step back on the modality's worklist: an exam done, offered again; a cancelled one likewise.
            # Content may change; status not.
            kept = (f"order {identity_text(record)}: {record.order_control} with ORC-5 '{record.order_status}' left "
                    f"the step {found.status} ({why})")
            status = found.status
    if found.status == status and (not content or found.content_hash == content_hash(record)):
        why = "resent, identical to the stored order" if content else f"the step is already {status}"
        return Applied((step_pk,), False, kept or f"order {identity_text(record)}: {record.order_control} changed "
                                                  f"nothing ({why})")
    if content:
        kept = "\n".join(filter(None, (kept, cleared_note(record, _update_content(conn, record, found, policy, now,
                                                                                   shared)))))
    else:
        conn.execute(
            update(orders)
            .where(orders.c.id == found.order_pk)
            .values(order_control=record.order_control, order_status=record.order_status, updated_at=now)
        )
    conn.execute(update(procedure_steps).where(procedure_steps.c.id == step_pk).values(status=status, updated_at=now))
    return Applied((step_pk,), note=kept)


def _kept_because(current: str, policy: OrderPolicy) -> str:
    """Why a step in ``current`` is not scheduled again by an NW/XO saying so ("": it is)."""
    if current in _UNDERWAY:
        return "an exam started or done is not scheduled again"
    if current in _ENDED and not policy.reopen_cancelled:
        # The placer order number names one order for good (HL7 v2.5.1 4.5.1.2): an NW under the number of
        # a cancelled order is a replay (an interface engine's queue after an outage), and putting the exam
        # back in front of the modality would have it done anyway. orders.reopen_cancelled allows it.
        return "a cancelled order is not scheduled again; a new order has a new placer order number " \
               "(orders.reopen_cancelled: true allows it)"
    return ""


def _one_order(found: Sequence[Any], record: OrderRecord, sequence: int) -> list[Any]:
    """The stored steps of the one order an NW/XO with a step list names.

    Several orders under one placer number (several requested procedures) are told apart by the
    Requested Procedure ID (find_orders), else by an SPS ID the message gives; still several is AE 205
    at ORC^n^2: the step list of one procedure cannot replace the steps of several.
    """
    by_order: dict[int, list[Any]] = {}
    for row in found:
        by_order.setdefault(int(row.order_pk), []).append(row)
    if len(by_order) == 1:
        return list(found)
    named = {s.scheduled_procedure_step_id for s in record.steps if s.scheduled_procedure_step_id}
    hits = [rows for rows in by_order.values() if any(r.sps_id in named for r in rows)]
    if len(hits) == 1:
        return hits[0]
    raise HL7ApplicationError(
        205, f"order {identity_text(record)} names {len(by_order)} stored requested procedures: give the "
        "Requested Procedure ID (IPC-2) of the one whose steps this message lists", ErrorLocation("ORC", sequence, 2))


def _update_steps(
    conn: Connection, record: OrderRecord, rows: Sequence[Any], status: str, policy: OrderPolicy, now: datetime
) -> Applied:
    """NW resent or XO with a step list (OMI^O23 IPCs): each listed step is matched by its SPS ID.

    A listed step found is updated (a started or completed one keeps its status, as in :func:`_update`);
    one not found is added. An XO replaces the order's scheduled steps (RAD TF-2 4.13): a stored step
    it no longer lists is DISCONTINUED when not started (engine.domain.steps.NOT_STARTED) and kept
    as it is when started or done. An NW resent adds and updates, and discontinues nothing.
    """
    order_pk = int(rows[0].order_pk)
    stored = {r.sps_id: r for r in rows}
    same = rows[0].content_hash == content_hash(record)
    views = step_views(record)
    touched: list[int] = []
    notes: list[str] = []
    blanked: list[str] = []
    who = f"order {identity_text(record)}"
    for view, sps_id in zip(views, assign_sps_ids(views, rows[0].requested_procedure_id), strict=True):
        row = stored.pop(sps_id, None)
        if row is None:
            touched.append(insert_step(conn, order_pk, view, sps_id, status or "SCHEDULED", policy, now))
            notes.append(f"{who}: step {sps_id} added")
            continue
        step_pk = int(row.step_pk)
        target = status or row.status
        why = _kept_because(row.status, policy) if target == "SCHEDULED" else ""
        if why:
            notes.append(f"{who}: {record.order_control} with ORC-5 '{record.order_status}' left the step {sps_id} "
                         f"{row.status} ({why})")
            target = row.status
        if not same:
            blanked += update_step(conn, view, step_pk, policy, now)
        if target != row.status:
            set_status(conn, step_pk, target, now)
        if not same or target != row.status:
            touched.append(step_pk)
    for sps_id, row in stored.items() if record.order_control in _REPLACING else ():
        if row.status in NOT_STARTED:
            set_status(conn, int(row.step_pk), "DISCONTINUED", now)
            touched.append(int(row.step_pk))
            notes.append(f"{who}: {record.order_control} no longer lists step {sps_id}: DISCONTINUED (it had not "
                         "started)")
        elif row.status in _UNDERWAY:
            notes.append(f"{who}: {record.order_control} no longer lists step {sps_id}: kept {row.status} (the exam "
                         "has started)")
    if not touched:
        why = "resent, identical to the stored order"
        return Applied((), False, "\n".join(notes) or f"{who}: {record.order_control} changed nothing ({why})")
    if not same:
        blanked[:0] = update_order_row(conn, record, order_pk, policy, now)
    return Applied(tuple(touched), note="\n".join(filter(None, (*notes, cleared_note(record, blanked)))))


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


def _one_to_correct(found: Sequence[Any], record: OrderRecord, policy: OrderPolicy, sequence: int) -> None:
    """An XO/XX with a new accession number must name one stored order; several is AE 205 at ORC^n^2.

    Its accession is not the sender's key when the engine generates them (``always_generate``).
    """
    several = 0 if policy.accession_policy == "always_generate" else ambiguous_correction(found, record)
    if several:
        raise HL7ApplicationError(
            205, f"ambiguous order identity: {record.order_control} for order {identity_text(record)} with "
            f"accession {record.accession_number} names {several} stored orders, none with that accession; give "
            "the Requested Procedure ID (OBR-19/IPC-2) of the one to change", ErrorLocation("ORC", sequence, 2))


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
    ipc_sequences: Sequence[int] = (),
) -> Applied:
    """Apply one order record (the ``sequence``-th ORC group of its message, for ERR locations).

    A record with ``steps`` (one per IPC, whose sequences in the message are ``ipc_sequences``)
    is one requested procedure with those steps: found by its order identity whatever its SPS IDs,
    its steps matched by SPS ID (:func:`_update_steps`); a status change (CA, DC, SC ...) applies
    to every step of the order.

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
    probe = record
    if record.steps:  # the order is found by its identity; its steps are told apart by SPS ID below
        check_distinct(record, ipc_sequences, sequence)
        probe = record.model_copy(update={"scheduled_procedure_step_id": ""})
    found = find_orders(conn, probe, by_accession=policy.accession_policy != "always_generate",
                        follow_up=record.order_control not in _CONTENT_CONTROLS)
    if found:
        _same_patient(conn, record, found, policy, known_patients, sequence)
        _one_to_correct(found, record, policy, sequence)
        if record.steps and record.order_control in _CONTENT_CONTROLS:
            return _update_steps(conn, record, _one_order(found, record, sequence), status, policy, now)
        per_order = Counter(int(row.order_pk) for row in found)
        results = [_update(conn, record, row, status, policy, now, per_order[int(row.order_pk)] > 1)
                   for row in found]
        changed = [r for r in results if r.changed]
        note = "\n".join(dict.fromkeys(r.note for r in changed if r.note)) if changed else results[0].note
        if changed and record.order_control in _CONTENT_CONTROLS and max(per_order.values()) > 1:
            note = "\n".join(filter(None, (note, f"order {identity_text(record)}: {record.order_control} without IPC "
                                                  "names none of the order's steps: their step fields are kept")))
        return Applied(tuple(r.step_pks[0] for r in results), bool(changed), note)
    refused = _new_order(record, policy, sequence)
    if refused is not None:
        return refused
    if not record.patient_id:  # ORM^O01 without PID: a follow-up is found above; a new order needs its patient
        raise HL7ApplicationError(101, f"order {identity_text(record)} is new and names no patient (PID-3.1 empty "
                                  "or no PID segment)", ErrorLocation("PID", 1, 3, 1))
    identity = (record.patient_id, record.issuer)
    patient_pk = (known_patients or {}).get(identity) or ensure_patient(conn, *identity, policy.patients, now)
    step_pks, note = _create(conn, record, key, status or "SCHEDULED", patient_pk, policy, now, message_id)
    return Applied(step_pks, note=note, created=True)


def step_keys(conn: Connection, step_pk: int) -> tuple[str, str]:
    """The patient id and accession number of the order a step belongs to (``("", "")`` if none)."""
    s, o, p = procedure_steps.c, orders.c, patients.c
    row = conn.execute(select(p.patient_id, o.accession_number).select_from(procedure_steps)
                       .join(orders, s.order_pk == o.id).join(patients, o.patient_pk == p.id)
                       .where(s.id == step_pk)).first()  # fmt: skip
    return (str(row[0]), str(row[1])) if row else ("", "")
