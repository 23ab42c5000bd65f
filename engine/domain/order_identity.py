"""Finding an order again by its HL7 identity (HL7 v2.5.1 4.5.1.2, 4.5.1.3: EI data type).

An order is identified by its placer order number (ORC-2, or OBR-2) and its
filler order number (ORC-3, or OBR-3), each with the namespace of the system
that assigned it (EI.2). Follow-up messages (CA, DC, XO, SC, a resent NW) are
found by them even when they carry nothing else: real RIS cancels often hold
only ORC and a minimal OBR, without accession, Requested Procedure ID, SPS ID
or modality. When the follow-up does give a Requested Procedure ID or an SPS ID,
only the steps with those ids match (one placer order may have several).
A namespace the follow-up leaves out matches any; two different namespaces never match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select

from engine.domain.records import OrderRecord
from engine.domain.tables import orders, procedure_steps
from engine.store.fast import FastStatement, all_rows

__all__ = ["CORRECTING", "ambiguous_correction", "find_orders", "given_ids", "identity_text"]

#: Order controls that correct a stored order's content, its accession number included (HL7 v2.5.1 table 0119:
#: XO "change order", XX "changed as requested", which a RIS sends on as its own XO).
CORRECTING = frozenset({"XO", "XX"})

_COLUMNS = (
    orders.c.id.label("order_pk"),
    orders.c.patient_pk,
    orders.c.content_hash,
    orders.c.placer_order_namespace,
    orders.c.filler_order_namespace,
    orders.c.requested_procedure_id,
    orders.c.accession_number,
    procedure_steps.c.id.label("step_pk"),
    procedure_steps.c.sps_id,
    procedure_steps.c.status,
)


def _by(column: Any) -> FastStatement:
    return FastStatement(
        select(*_COLUMNS)
        .join(procedure_steps, procedure_steps.c.order_pk == orders.c.id)
        .where(column == bindparam("number"))
    )  # in step order: sorted here (no ORDER BY, whose sorter SQLite sets up even when nothing matches)


_BY_PLACER = _by(orders.c.placer_order_number)
_BY_FILLER = _by(orders.c.filler_order_number)
_BY_ACCESSION = _by(orders.c.accession_number)


def _same(given: str, stored: str) -> bool:
    return not given or not stored or given == stored


def given_ids(record: OrderRecord) -> tuple[str, str]:
    """(Requested Procedure ID, SPS ID) as the sender gave them.

    The shipped mapping fills a missing Requested Procedure ID with the accession
    number and a missing SPS ID with the Requested Procedure ID; such copies are
    not the sender's ids and must not keep a follow-up from its order.
    """
    rp_id = "" if record.requested_procedure_id == record.accession_number else record.requested_procedure_id
    sps_id = "" if record.scheduled_procedure_step_id == record.requested_procedure_id else \
        record.scheduled_procedure_step_id
    return rp_id, sps_id


def _step_pk(row: Any) -> int:
    return int(row.step_pk)


def _narrow(
    rows: Sequence[Any], record: OrderRecord, namespace_of: str, namespace: str, by_accession: bool
) -> list[Any]:
    if len(rows) > 1:
        rows = sorted(rows, key=_step_pk)
    rp_id, sps_id = given_ids(record)
    named = [
        r for r in rows
        if _same(namespace, getattr(r, namespace_of)) and _same(rp_id, r.requested_procedure_id)
        and _same(sps_id, r.sps_id)
    ]  # fmt: skip
    if not by_accession:
        return named
    found = [r for r in named if _same(record.accession_number, r.accession_number)]
    if found or record.order_control not in CORRECTING:
        return found
    # An XO naming its order by placer/filler number (and perhaps the sender's own Requested Procedure ID or
    # SPS ID) with another accession number: the RIS corrected that order's accession (PIR campaign, then
    # hl7fix5: a second order was created beside it). Only an XO: a new order (NW) with another accession
    # under one placer number is another procedure. When the rows name several orders, engine.domain.orders
    # refuses the XO (ambiguous_correction): which order's accession changes cannot be told.
    return named


def find_orders(
    conn: Connection, record: OrderRecord, by_accession: bool = True, follow_up: bool = True
) -> list[Any]:
    """The stored steps of the order ``record`` names: by placer number, else filler, else accession.

    Each row has order_pk, patient_pk, content_hash, step_pk, status (and the ids it was matched on).
    ``by_accession`` False: a differing accession number does not rule a row out (the
    stored one is the engine's own, not the sender's); nor does it when the record gives
    its own Requested Procedure ID or SPS ID (:func:`given_ids`), which name the procedure.
    ``follow_up`` False (NW, XO): an order with a placer number that finds nothing is new, so the
    filler number is not searched as well, which spares every new order a second query.
    """
    searches = [(_BY_PLACER, record.placer_order_number, "placer_order_namespace", record.placer_order_namespace)]
    if follow_up or not record.placer_order_number:
        searches.append(
            (_BY_FILLER, record.filler_order_number, "filler_order_namespace", record.filler_order_namespace)
        )
    for statement, number, namespace_of, namespace in searches:
        if number:
            rows = all_rows(statement, conn, {"number": number})
            found = _narrow(rows, record, namespace_of, namespace, by_accession) if rows else rows
            if found:
                return found
    if record.placer_order_number or record.filler_order_number or not record.accession_number:
        return []
    rows = all_rows(_BY_ACCESSION, conn, {"number": record.accession_number})
    return _narrow(rows, record, "placer_order_namespace", "", True)


def ambiguous_correction(rows: Sequence[Any], record: OrderRecord) -> int:
    """How many stored orders an XO/XX names that none has its accession number (0: not ambiguous).

    Such an XO changes the accession of the one order its placer/filler number names
    (:func:`_narrow`); when the number names several (procedures under one placer order), which of
    them the new accession belongs to cannot be told, and a second order must not be made either.
    """
    if record.order_control not in CORRECTING or not record.accession_number:
        return 0
    if any(r.accession_number == record.accession_number for r in rows):
        return 0
    count = len({int(r.order_pk) for r in rows})
    return count if count > 1 else 0


def identity_text(record: OrderRecord) -> str:
    """The order's identity for messages: ``placer P1^RIS, filler F1`` (numbers are not PHI)."""
    parts = [
        f"{label} {number}" + (f"^{namespace}" if namespace else "")
        for label, number, namespace in (
            ("placer", record.placer_order_number, record.placer_order_namespace),
            ("filler", record.filler_order_number, record.filler_order_namespace),
            ("accession", record.accession_number, ""),
        )
        if number
    ]
    return ", ".join(parts[:2]) or "(no number)"
