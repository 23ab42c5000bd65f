"""The ``patients`` and ``orders`` handlers: mapped records → the domain (engine.handlers door).

A channel lists them in ``handlers:``; each gets the message's records
(``InboundContext.records``, dicts validated against engine.domain.records)
inside the channel's transaction. Records of other types are ignored, so
both handlers can run on one channel. Errors are HL7ApplicationError (AE
with an ERR location) or HL7Reject (AR); the channel rolls back everything.
Each record's outcome (changed, or not and why) goes to ``ctx.note``; an ADT
or order message that yields no record of its kind is refused, never AA with
nothing done: no PID / ORC is AE 101, an event nothing implements is AR 201.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import Connection

from engine.config.models import ChannelConfig, EngineConfig
from engine.domain.identity import resolve_identity
from engine.domain.lengths import KEPT_WHOLE, over_dicom
from engine.domain.order_identity import identity_text
from engine.domain.order_kind import NON_IMAGING_TABLE, load_non_imaging
from engine.domain.orders import CONTROL_TABLE, OrderPolicy, apply_order, load_control_table, step_keys
from engine.domain.patients import (
    IMPLEMENTED_EVENTS,
    PatientPolicy,
    apply_patient_event,
    change_identifier,
    merge_patient,
)
from engine.domain.reconcile import request_for_orders, request_for_patient
from engine.domain.records import MergeRecord, OrderRecord, PatientRecord
from engine.domain.steps import ipc_location, step_views
from engine.errors import ErrorLocation, HL7ApplicationError, HL7Reject
from engine.handlers import InboundContext, Outbound, register_handler
from engine.hl7.dicom_text import safe_value
from engine.hl7.er7 import Message

__all__ = [
    "OrdersHandler",
    "PatientsHandler",
    "cleared_note",
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
    path = cfg.order_control_table or engine.mappings_dir / "tables" / CONTROL_TABLE
    non_imaging = cfg.non_imaging_table or engine.mappings_dir / "tables" / NON_IMAGING_TABLE
    return OrderPolicy(
        control_table=load_control_table(path),
        control_table_name=path.name,
        non_imaging_codes=load_non_imaging(non_imaging),
        accession_policy=cfg.accession_policy,
        accession_pattern=cfg.accession_pattern,
        accession_sequence=cfg.accession_sequence,
        uid_root=cfg.uid_root,
        station_rules=tuple(cfg.station_rules),
        imaging_modalities=frozenset(cfg.imaging_modalities),
        non_imaging=cfg.non_imaging_by_channel.get(channel, cfg.non_imaging),
        timezone=ZoneInfo(engine.timezone),
        patients=patient_policy(engine),
        reopen_cancelled=cfg.reopen_cancelled,
    )


#: Where the shipped mappings read each identifier (its first source), for the ERR-2 of one that is
#: too long: (segment, field, component); the record's own segment when not listed here.
_SOURCES: dict[str, tuple[str, int, int | None]] = {
    "patient_id": ("PID", 3, 1), "issuer": ("PID", 3, 4), "other_ids": ("PID", 3, None),
    "admission_id": ("PV1", 19, 1), "prior_patient_id": ("MRG", 1, 1), "prior_issuer": ("MRG", 1, 4),
    "prior_other_ids": ("MRG", 1, None), "placer_order_number": ("ORC", 2, 1),
    "placer_order_namespace": ("ORC", 2, 2), "filler_order_number": ("ORC", 3, 1),
    "filler_order_namespace": ("ORC", 3, 2), "accession_number": ("OBR", 18, None),
    "issuer_of_accession_number": ("IPC", 1, 2), "study_instance_uid": ("ZDS", 1, 1),
    "requested_procedure_id": ("OBR", 19, None), "scheduled_procedure_step_id": ("OBR", 20, None),
    "modality": ("OBR", 24, None), "scheduled_station_name": ("IPC", 7, None),
    "scheduled_procedure_step_location": ("IPC", 8, None), "requested_procedure_code": ("OBR", 4, None),
    "scheduled_protocol_code": ("OBR", 4, None), "patient_name": ("PID", 5, None),
    "referring_physician_name": ("PV1", 8, None), "requesting_physician": ("OBR", 16, None),
    "scheduled_performing_physician_name": ("OBR", 34, None),
}  # fmt: skip
#: An OMI^O23 carries these in IPC (the shipped mapping reads IPC first).
_IPC_SOURCES: dict[str, tuple[str, int, int | None]] = {
    "accession_number": ("IPC", 1, 1), "requested_procedure_id": ("IPC", 2, None),
    "study_instance_uid": ("IPC", 3, None), "scheduled_procedure_step_id": ("IPC", 4, None),
    "modality": ("IPC", 5, None), "scheduled_protocol_code": ("IPC", 6, None),
}  # fmt: skip
_GROUP_SEGMENTS = frozenset({"ORC", "OBR", "IPC"})  # repeat per order: the order's sequence
_PN_NAMES = frozenset({"patient_name", "referring_physician_name", "requesting_physician",
                       "scheduled_performing_physician_name"})


#: The one multi-valued field: its backslashes separate the station AE titles (IPC-9 repetitions).
_MULTI_VALUED = "scheduled_station_ae_title"


def _dicom_safe(data: Any) -> Any:
    """``data`` with a backslash in any text value replaced by '/' (engine.hl7.dicom_text): every
    field of these records is a DICOM value of a VR whose values a backslash separates."""
    if isinstance(data, str):
        return safe_value(data)
    if isinstance(data, dict):
        return {k: v if k == _MULTI_VALUED else _dicom_safe(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_dicom_safe(v) for v in data]
    return data


def _limit_text(name: str, limit: int) -> str:
    """What holds at most ``limit`` characters of field ``name``, for the AE 102 text."""
    if name in KEPT_WHOLE:
        return f"radbridge keeps at most {limit} (a DICOM SH holds 16)"
    if name in _PN_NAMES:
        return f"radbridge keeps at most {limit} (a DICOM PN holds 64 per component group)"
    vr = "CS" if name == "modality" else "SH" if limit == 16 else "LO"
    return f"a DICOM {vr} holds at most {limit}"


def _validate(
    model: type[Any], data: dict[str, Any], segment: str, sequence: int = 1, ipc: bool = False,
    ipc_sequences: tuple[int, ...] = (),
) -> Any:
    """``model.model_validate(data)`` (same checks, same model), AE 101 at ``segment`` if invalid;
    a value longer than its column allows (engine.domain.records, engine.domain.lengths) is AE 102
    at its field, in IPC for an order message with IPC segments (``ipc``): a step's, at its own
    IPC (``ipc_sequences``: the message sequences of the order's IPCs).

    Called on the model's validator directly: ``model_validate`` only passes its default
    options on, and that costs ~10 % of a record's validation, twice an order message.
    """
    try:
        return model.__pydantic_validator__.validate_python(_dicom_safe(data))
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = error["loc"]
        step = loc[1] if len(loc) > 2 and loc[0] == "steps" and isinstance(loc[1], int) else None
        name = str(loc[2] if step is not None else loc[0]) if loc else ""
        if error["type"] == "string_too_long" and name in _SOURCES:
            seg, field, component = (_IPC_SOURCES if ipc else {}).get(name) or _SOURCES[name]
            ordinal = sequence if seg in _GROUP_SEGMENTS else 1
            if seg == "IPC" and ipc_sequences:  # the order's own step fields are its first IPC's
                ordinal = ipc_location(ipc_sequences, step or 0, field, sequence).sequence
            location = ErrorLocation(seg, ordinal, field, component)
            limit = error["ctx"]["max_length"]
            shown = ".".join(str(part) for part in error["loc"] if isinstance(part, str))
            raise HL7ApplicationError(
                102, f"{shown} ({seg}-{field}) is {len(error['input'])} characters; {_limit_text(name, limit)} "
                f"(shorten it at the sender, or in the mapping with {{truncate: {limit}}})", location) from exc
        raise HL7ApplicationError(101, f"{segment} record invalid: {error['msg']}", ErrorLocation(segment, 1)) from exc


def _over_dicom(order: OrderRecord, sequence: int, ipc_sequences: tuple[int, ...]) -> list[str]:
    """engine.domain.lengths.over_dicom for the order's one step, or for each of its steps at its IPC."""
    if not order.steps:
        return over_dicom(order, sequence)
    notes: list[str] = []
    for index, view in enumerate(step_views(order)):
        where = ipc_location(ipc_sequences, index, 9, sequence).sequence
        found = over_dicom(view, where)
        notes += found if not index else [f"IPC {where}: {n}" for n in found if not n.startswith(_ORDER_LEVEL)]
    return notes


#: The one identifier over_dicom checks that is the order's, not the step's: said once.
_ORDER_LEVEL = KEPT_WHOLE["requested_procedure_id"][0]


_KNOWN = "patient_pks"


def _remember(ctx: InboundContext, rec: PatientRecord, policy: PatientPolicy, pk: int) -> None:
    """Note the live pk of the patient just upserted, under the identity an order looks up.

    That is the identity engine.domain.identity chooses, the same for the PID's patient
    record and the message's order records.
    """
    patient_id, issuer, _ = resolve_identity(rec, policy.trusted_issuers)
    ctx.shared.setdefault(_KNOWN, {})[(patient_id, issuer)] = pk


_ORDER_MESSAGES = frozenset({"ORM", "OMI", "OMG"})
#: ORC-1 values that carry the order's content: a change may reach values coerced into stored images.
_CONTENT_UPDATES = frozenset({"NW", "XO", "XX"})


def _one_procedure_per_orc(message: Message) -> list[tuple[int, ...]]:
    """Each ORC group of an order message is one requested procedure: its OBR. The IPC sequences of each group.

    One ORC followed by two OBRs (a RIS ordering CT head and CT neck under one placer number) was
    answered AA with only the first procedure on the worklist: the order mapping reads one group per
    ORC. Such a message is AE 100 at the second OBR, and changes nothing; the sender must give each
    procedure its own ORC. Several IPCs in one group are the procedure's steps (RAD TF-2 4.4.4): their
    sequences in the message, per group, place the ERR of a step's field.
    """
    obrs = 0
    ipcs = 0
    in_group = 0
    groups: list[list[int]] = []
    prior = False  # in an OMG^O19 PRIOR_RESULT (a PID inside the ORDER group): OBRs of earlier orders
    for seg in message.segments:
        if seg.name == "ORC":
            groups.append([])
            in_group = 0
            continue
        if seg.name == "PID" and groups:
            prior = True
        if seg.name == "IPC":
            ipcs += 1
            if groups and not prior:
                groups[-1].append(ipcs)
        if seg.name != "OBR":
            continue
        obrs += 1
        if not groups or prior:
            continue
        in_group += 1
        if in_group > 1:
            raise HL7ApplicationError(
                100, f"ORC group {len(groups)} has a second OBR (OBR {obrs} of the message): only one requested "
                "procedure per ORC is scheduled, so this one would be dropped; send each procedure with its own ORC",
                ErrorLocation("OBR", obrs))
    return [tuple(g) for g in groups]


def _require(message: Message, kinds: tuple[str, ...], segment: str, records: list[dict[str, Any]]) -> None:
    """A message of this handler's kind must yield a record: AE 101 without the segment, else AR 201."""
    for r in records:
        if r.get("record") in kinds:
            return
    if message.segment(segment) is None:
        raise HL7ApplicationError(101, f"{message.message_type} has no {segment} segment", ErrorLocation(segment, 1))
    raise HL7Reject(
        201, f"{message.message_type} is not implemented: the channel's mapping yields no {kinds[0]} record for it",
        ErrorLocation("MSH", 1, 9, 2),
    )


def _renames_first(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An A47's PID already carries the new id: rename first, then refresh its demographics.

    Applied in order, the PID would create the new id and the rename would then find it taken.
    """
    renamed = {(r.get("patient_id"), r.get("issuer", "")) for r in records
               if r.get("record") == "merge" and r.get("kind") == "change_id"} if len(records) > 1 else None
    if not renamed:  # an A47 has a merge record and a PID: a lone record has nothing to reorder
        return records
    return sorted(records, key=lambda r: r.get("record") == "patient"
                  and (r.get("patient_id"), r.get("issuer", "")) in renamed)


def _full_birth_date(rec: PatientRecord) -> tuple[PatientRecord, str]:
    """``rec`` without a birth date of a year or a year and month, and the note that says so.

    HL7 allows a date without its day (DT ``YYYY[MM]``: a patient whose day of birth is unknown);
    DICOM's DA does not. The patient is kept with no birth date from this message (a stored one
    stays, as for an empty field). The note names the field, never its value (PHI).
    """
    if not rec.birth_date or len(rec.birth_date) == 8:
        return rec, ""
    precision = "a year" if len(rec.birth_date) == 4 else "a year and month"
    note = (f"patient {rec.patient_id}: the birth date is {precision} without a day; DICOM needs YYYYMMDD, "
            "so none was taken from this message")
    return rec.model_copy(update={"birth_date": ""}), note


def cleared_note(patient_id: str, names: list[str]) -> str:
    """The message's note for stored demographics an explicit HL7 null blanked (field names, no values)."""
    return f"patient {patient_id}: {', '.join(names)} cleared (sent as HL7 null \"\")"


#: A merge record's kind -> the ADT event it comes from (PIR tells the PACS the same kind of change).
_MERGE_EVENTS = {"merge": "A40", "change_id": "A47"}


@dataclass(slots=True)
class PatientsHandler:
    """ADT: patient records (A01/A04/A05/A08/A31/A10/A11 …) and merge records (A40/A47)."""

    policy: PatientPolicy
    name: str = "patients"

    def apply(self, conn: Connection, ctx: InboundContext) -> list[Outbound]:
        """Apply every patient and merge record of ``ctx`` in order (an A47's PID after its rename)."""
        adt = ctx.message.message_code == "ADT"
        if adt:
            _require(ctx.message, ("patient", "merge"), "PID", ctx.records)
        now = ctx.received_at  # one timestamp for everything this message changes
        corrected: dict[int, str] = {}  # patient pk -> the event that changed it (a merge's wins)
        for data in _renames_first(ctx.records):
            kind = data.get("record")
            if kind == "patient":
                patient, partial = _full_birth_date(_validate(PatientRecord, data, "PID"))
                if partial:
                    ctx.note(False, partial)
                if adt and patient.event not in IMPLEMENTED_EVENTS:
                    raise HL7Reject(201, f"ADT^{patient.event} is not implemented by the patients handler",
                                    ErrorLocation("MSH", 1, 9, 2))
                blanked: list[str] = []
                pk = apply_patient_event(conn, patient, self.policy, now, blanked)
                _remember(ctx, patient, self.policy, pk)
                event = patient.event
                if blanked:
                    ctx.note(True, cleared_note(patient.patient_id, blanked))
            elif kind == "merge":
                ctx.shared.pop(_KNOWN, None)  # a merge may move a patient remembered before it
                rec: MergeRecord = _validate(MergeRecord, data, "MRG")
                if rec.kind == "change_id":
                    pk = change_identifier(conn, rec, self.policy, now)
                else:
                    pk = merge_patient(conn, rec, self.policy, now)
                event = _MERGE_EVENTS[rec.kind]
            else:
                continue
            if adt:  # for an order's PID, the orders handler reports what the message did
                ctx.note(True)
                if corrected.get(pk) not in _MERGE_EVENTS.values():
                    corrected[pk] = event
        for pk, trigger in corrected.items():  # PIR (#13): the patient's stored images follow, in the background
            studies_with_images = request_for_patient(conn, pk, now, trigger)
            if studies_with_images:  # said on the message (`messages show`): the ACK alone said nothing of it
                ctx.note(True, f"{trigger}: the stored images of {studies_with_images} study(ies) of the patient are "
                               "queued for correction (job reconcile-images; only instances whose header no "
                               "longer agrees are rewritten, reason CORRECT)")
        return []


@dataclass(slots=True)
class OrdersHandler:
    """ORM^O01 / OMI^O23 / OMG^O19: each order record is a requested procedure and its step."""

    policy: OrderPolicy
    upsert_patients: bool = True  # off when the channel's "patients" handler already applies them
    name: str = "orders"

    def apply(self, conn: Connection, ctx: InboundContext) -> list[Outbound]:
        """Upsert the PID's patient (unless ``patients`` runs too), then apply every order record."""
        ipc_groups: list[tuple[int, ...]] = []
        if ctx.message.message_code in _ORDER_MESSAGES:
            _require(ctx.message, ("order",), "ORC", ctx.records)
            ipc_groups = _one_procedure_per_orc(ctx.message)
        now = ctx.received_at
        for data in ctx.records:
            if self.upsert_patients and data.get("record") == "patient":
                rec, partial = _full_birth_date(_validate(PatientRecord, data, "PID"))
                if partial:
                    ctx.note(False, partial)
                blanked: list[str] = []
                pk = apply_patient_event(conn, rec.model_copy(update={"event": ""}), self.policy.patients, now, blanked)
                _remember(ctx, rec, self.policy.patients, pk)
                if blanked:
                    ctx.note(True, cleared_note(rec.patient_id, blanked))
        known = ctx.shared.get(_KNOWN)
        sequence = 0
        ipc = ctx.message.segment("IPC") is not None
        for data in ctx.records:
            if data.get("record") != "order":
                continue
            sequence += 1
            ipcs = ipc_groups[sequence - 1] if sequence <= len(ipc_groups) else ()
            order = _validate(OrderRecord, data, "ORC", sequence, ipc, ipcs)
            long_ids = _over_dicom(order, sequence, ipcs)
            applied = apply_order(conn, order, self.policy, now, ctx.message_id, known, sequence, ipcs)
            if long_ids:  # kept whole: said on the message, whatever else the order did
                long_ids = [f"order {identity_text(order)}: {n}" for n in long_ids]
            patient_id, accession = order.patient_id, order.accession_number
            if not patient_id and applied.step_pks:  # an ORC-only follow-up: listed under the order's
                found_id, found_accession = step_keys(conn, applied.step_pks[0])
                patient_id, accession = patient_id or found_id, accession or found_accession
            ctx.note(applied.changed, "\n".join(filter(None, (applied.note, *long_ids))), patient_id=patient_id,
                     accession_number=accession)
            if applied.changed:  # reconciliation (#13): unscheduled studies this order may own, or its stored
                # studies to correct after a content update (XO), in the background. A new order has no
                # stored study yet (its pk is new, a deleted order's studies were unlinked): only the former.
                content = not applied.created and order.order_control in _CONTENT_UPDATES
                request_for_orders(conn, applied.step_pks, now, content=content)
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
