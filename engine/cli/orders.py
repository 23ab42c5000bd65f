"""``radbridge orders show NUMBER``: the requested procedures an order number names, each with its steps.

One order is one requested procedure (one accession number, one Study Instance UID); its
Scheduled Procedure Steps are the worklist's items, one per IPC of an OMI^O23 (IHE RAD-4,
engine.domain.steps). The number is a placer, filler or accession number. The output names
the patient by id, so every read is recorded (:mod:`engine.audit`) as ``order.show``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, or_, select

from engine.audit import Actor, record
from engine.domain.tables import orders, patients, procedure_steps

if TYPE_CHECKING:
    from engine.store.database import Database

__all__ = ["add_subcommands", "audited_orders", "order_details"]

_ORDER_COLUMNS = (
    orders.c.id, orders.c.placer_order_number, orders.c.filler_order_number, orders.c.accession_number,
    orders.c.requested_procedure_id, orders.c.study_instance_uid, orders.c.requested_procedure_description,
    orders.c.order_control, orders.c.order_status, patients.c.patient_id, patients.c.issuer, orders.c.updated_at,
)
_STEP_COLUMNS = (
    procedure_steps.c.sps_id, procedure_steps.c.status, procedure_steps.c.modality,
    procedure_steps.c.scheduled_station_ae_title, procedure_steps.c.scheduled_station_name,
    procedure_steps.c.start_datetime, procedure_steps.c.protocol_code_value, procedure_steps.c.description,
)


def _jsonable(row: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row._mapping.items()}


def order_details(conn: Connection, number: str) -> list[dict[str, Any]]:
    """Every order whose placer, filler or accession number is ``number``, each with its ``steps``."""
    found = conn.execute(
        select(*_ORDER_COLUMNS).join(patients, patients.c.id == orders.c.patient_pk)
        .where(or_(orders.c.placer_order_number == number, orders.c.filler_order_number == number,
                   orders.c.accession_number == number)).order_by(orders.c.id)
    ).all()
    out = []
    for row in found:
        detail = _jsonable(row)
        pk = detail.pop("id")
        steps = conn.execute(select(*_STEP_COLUMNS).where(procedure_steps.c.order_pk == pk)
                             .order_by(procedure_steps.c.id))
        detail["steps"] = [_jsonable(s) for s in steps]
        out.append(detail)
    return out


def audited_orders(db: Database, number: str, actor: Actor | None = None) -> list[dict[str, Any]]:
    """:func:`order_details`, recorded as ``order.show`` with the accession numbers it returned."""
    return db.writer.call(partial(_details_and_record, number=number, actor=actor))


def _details_and_record(conn: Connection, number: str, actor: Actor | None) -> list[dict[str, Any]]:
    details = order_details(conn, number)
    if details:
        record(conn, "order.show", "order", number, {"accession_numbers": [d["accession_number"] for d in details]},
               actor)
    return details


def _text(details: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for d in details:
        lines += [
            f"order placer {d['placer_order_number'] or '-'}, filler {d['filler_order_number'] or '-'}: accession "
            f"{d['accession_number']}, requested procedure {d['requested_procedure_id']} "
            f"({d['requested_procedure_description']}), patient {d['patient_id']}^^^{d['issuer']}",
            f"  study {d['study_instance_uid']}; last order control (ORC-1) {d['order_control'] or '-'},"
            f" order status (ORC-5) {d['order_status'] or '-'}, at {d['updated_at']}",
            f"  {len(d['steps'])} step(s):",
        ]
        lines += [f"    {s['sps_id']} {s['status']} {s['modality']} at {s['scheduled_station_ae_title'] or '-'}"
                  f" ({s['scheduled_station_name'] or '-'}) {s['start_datetime']} protocol "
                  f"{s['protocol_code_value'] or '-'} {s['description']}".rstrip() for s in d["steps"]]
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace, db: Database) -> int:
    """``orders show NUMBER``; 1 if no order has that number."""
    details = audited_orders(db, args.number)
    if not details:
        print(f"no order with placer, filler or accession number {args.number}", file=sys.stderr)
        return 1
    print(json.dumps(details, indent=2, default=str) if args.json else _text(details))
    return 0


def add_subcommands(sub: Any, database: Any) -> None:
    """Register ``orders show``; ``database(args)`` opens the configured database."""
    cmds = sub.add_parser("orders", help="orders and their worklist steps (audited)").add_subparsers(
        dest="orders_command", required=True)
    show = cmds.add_parser("show", help="the orders a placer, filler or accession number names, with their steps")
    show.add_argument("number", metavar="NUMBER", help="a placer, filler or accession number")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(fn=lambda args: cmd_show(args, database(args)))
