"""Procedure status messages to the RIS (IHE RAD-6/7 → ORM^O01 SC / OMI^O23).

Pure: given the steps an MPPS performed and the new status, build one ER7
message with one ORC group per step: ORC-1 ``SC`` and ORC-5 the status of the
step's *order* (HL7 v2.5.1 4.5.1, table 0038): ``IP`` while another step of the
order is still to be done, ``CM`` once all have ended and one was completed,
``DC`` once all have ended and none was. An order is what the RIS tracks; a
multi-step order (OMI^O23, one IPC per step) is not complete when its first
step's MPPS is, and IPC-4 / OBR-20 name the step the message is about. The control id is derived from the MPPS and the
status, so a redelivery carries the same MSH-10 (idempotent at the receiver).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from engine.hl7.er7 import Separators, escape

__all__ = ["ORDER_STATUS", "StatusHeader", "StepSummary", "build_status_message", "order_status"]

#: PerformedProcedureStepStatus → ORC-5 order status (HL7 table 0038).
ORDER_STATUS: dict[str, str] = {"IN PROGRESS": "IP", "COMPLETED": "CM", "DISCONTINUED": "DC"}
_SEPS = Separators()
#: Scheduled Procedure Step statuses after which the step will not be performed.
_ENDED = frozenset({"COMPLETED", "DISCONTINUED", "CANCELED", "EXPIRED"})
#: Statuses of a step that was or is being performed.
_PERFORMED = frozenset({"STARTED", "COMPLETED"})


def order_status(step_statuses: Iterable[str]) -> str:
    """ORC-5 (table 0038) of an order from the statuses of all its steps.

    ``CM`` when every step has ended and at least one was completed, ``DC`` when every step has ended and
    none was, ``IP`` while one was performed or is being performed and another has not ended, ``SC``
    while none was (a step discontinued before any other started).
    """
    statuses = set(step_statuses)
    if statuses and statuses <= _ENDED:
        return "CM" if "COMPLETED" in statuses else "DC"
    return "IP" if statuses & _PERFORMED else "SC"


@dataclass(frozen=True, slots=True)
class StepSummary:
    """What the RIS needs to recognise one step."""

    patient_id: str
    issuer: str
    patient_name: str
    placer_order_number: str
    filler_order_number: str
    accession_number: str
    requested_procedure_id: str
    study_instance_uid: str
    sps_id: str
    modality: str
    procedure_code: str
    procedure_text: str
    #: ORC-5 of the step's order (``order_status``); empty: the PPS status's own code (a lone step).
    order_status: str = ""
    #: EI-2 of the placer and filler numbers, as the order came (ORC-2.2/3.2): the RIS's own order identity.
    placer_order_namespace: str = ""
    filler_order_namespace: str = ""


@dataclass(frozen=True, slots=True)
class StatusHeader:
    """MSH values for status messages."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    kind: Literal["ORM", "OMI"] = "ORM"


def _e(value: str) -> str:
    return escape(value, _SEPS)


def _name(pn: str) -> str:
    """DICOM PN family^given^middle^prefix^suffix → XPN family^given^middle^suffix^prefix."""
    group = next((g for g in pn.split("=") if g), "")  # alphabetic, else the first group there is
    parts = (group.split("^") + [""] * 5)[:5]
    return "^".join(_e(p) for p in (parts[0], parts[1], parts[2], parts[4], parts[3])).rstrip("^")


def _ei(number: str, namespace: str) -> str:
    """An EI: the number, with its namespace when the order had one (``PL1^RIS``)."""
    return f"{_e(number)}^{_e(namespace)}" if namespace else _e(number)


def _group(n: int, step: StepSummary, orc5: str, kind: str, when: str) -> list[str]:
    orc5 = step.order_status or orc5
    service = f"{_e(step.procedure_code)}^{_e(step.procedure_text)}"
    placer = _ei(step.placer_order_number, step.placer_order_namespace)
    filler = _ei(step.filler_order_number, step.filler_order_namespace)
    orc = f"ORC|SC|{placer}|{filler}||{orc5}||||{when}"
    obr = (
        f"OBR|{n}|{placer}|{filler}|{service}"
        + "|" * 14
        + f"{_e(step.accession_number)}|{_e(step.requested_procedure_id)}|{_e(step.sps_id)}"
        + "||||"
        + _e(step.modality)
    )
    if kind == "ORM":
        return [orc, obr, f"ZDS|{step.study_instance_uid}^^Application^DICOM"]
    ipc = (
        f"IPC|{_e(step.accession_number)}|{_e(step.requested_procedure_id)}|{step.study_instance_uid}"
        f"|{_e(step.sps_id)}|{_e(step.modality)}"
    )
    return [orc, obr, ipc]


def build_status_message(
    header: StatusHeader, steps: Sequence[StepSummary], status: str, control_id: str, now: datetime
) -> bytes:
    """One ORM^O01 (or OMI^O23) for ``steps`` now in PPS ``status``; UTF-8 (MSH-18 UNICODE UTF-8)."""
    when = now.strftime("%Y%m%d%H%M%S")
    mtype = "ORM^O01^ORM_O01" if header.kind == "ORM" else "OMI^O23^OMI_O23"
    first = steps[0]
    segments = [
        f"MSH|^~\\&|{_e(header.sending_application)}|{_e(header.sending_facility)}"
        f"|{_e(header.receiving_application)}|{_e(header.receiving_facility)}|{when}||{mtype}"
        f"|{control_id}|P|2.5.1||||||UNICODE UTF-8",  # MSH-13..17 empty: the charset is MSH-18
        f"PID|1||{_e(first.patient_id)}^^^{_e(first.issuer)}||{_name(first.patient_name)}",
    ]
    for n, step in enumerate(steps, start=1):
        segments += _group(n, step, ORDER_STATUS[status], header.kind, when)
    return ("\r".join(segments) + "\r").encode("utf-8")
