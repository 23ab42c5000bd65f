"""Record dicts as the mapping produces them, and a way to run a handler on them.

Reusable by the channel's end-to-end tests: ``apply_records(db, handler, records)``
runs one handler on one message's records in one committed transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine.handlers import Handler, InboundContext, Outbound
from engine.hl7.er7 import Message
from engine.store.database import Database

MSH = "MSH|^~\\&|RIS|HOSP|RADBRIDGE|HOSP|20261122080000||ORM^O01|MSG1|P|2.5.1"


def patient(patient_id: str = "P1", **fields: Any) -> dict[str, Any]:
    """A ``patient`` record (PID) with a name, birth date and sex."""
    base: dict[str, Any] = {
        "record": "patient",
        "patient_id": patient_id,
        "issuer": "HOSP",
        "patient_name": "DOE^JANE",
        "birth_date": "19700101",
        "sex": "F",
    }
    return base | fields


def order(placer: str = "PL1", **fields: Any) -> dict[str, Any]:
    """A new (NW/SC) ``order`` record for patient P1, CT on CT1 at 2026-11-22 09:30."""
    base: dict[str, Any] = {
        "record": "order",
        "order_control": "NW",
        "order_status": "SC",
        "patient_id": "P1",
        "issuer": "HOSP",
        "placer_order_number": placer,
        "filler_order_number": f"F{placer}",
        "modality": "CT",
        "scheduled_station_ae_title": "CT1",
        "scheduled_start": "202611220930",
        "priority": "R",
        "requested_procedure_description": "CT HEAD",
        "requested_procedure_code": {
            "code_value": "CTHEAD",
            "coding_scheme_designator": "L",
            "code_meaning": "CT head",
        },
        "scheduled_procedure_step_description": "CT head plain",
    }
    return base | fields


def merge(survivor: str, prior: str, kind: str = "merge") -> dict[str, Any]:
    """A ``merge`` record (A40 pair or A47)."""
    return {
        "record": "merge",
        "kind": kind,
        "patient_id": survivor,
        "issuer": "HOSP",
        "prior_patient_id": prior,
        "prior_issuer": "HOSP",
    }


def apply_records(
    db: Database, handler: Handler, records: list[dict[str, Any]], message: str = MSH + "\r"
) -> list[Outbound]:
    """Run ``handler`` on ``records`` in one committed transaction (as the channel does)."""
    return db.writer.call(lambda conn: handler.apply(conn, context(records, message)))


def context(records: list[dict[str, Any]], message: str = MSH + "\r") -> InboundContext:
    """The handlers' view of one message with ``records`` (an ORM^O01 unless ``message`` says)."""
    return InboundContext(
        message_id=1,
        channel="test",
        message=Message(message),
        received_at=datetime.now(UTC),
        records=records,
    )
