"""The Scheduled Procedure Steps of one order record (IHE RAD TF-2 4.4.4, OMI^O23 IPC; PS3.4 K.6.1.2.2).

An order record is one requested procedure. An OMI^O23 ORC group may carry several IPC
segments, one per Scheduled Procedure Step, which the mapping gives as ``steps``; an order
without them (ORM^O01, OMG^O19, an OMI^O23 without IPC) has one step, its own step fields.
Each step is keyed by its SPS ID within the order:

* two steps of one message with the same SPS ID are refused (AE 205 at the second's IPC-4),
  never one silently written over the other;
* a step without SPS ID gets one: the first the Requested Procedure ID (as a lone step always
  did, dcm4chee's fallback), the next ``<RP ID>.2``, ``<RP ID>.3`` ..., skipping the ids the
  message gives. The same message gives the same ids, so a resent order finds its steps again.

Pure functions over records; engine.domain.orders stores what they decide.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.domain.records import OrderRecord, StepRecord
from engine.errors import ErrorLocation, HL7ApplicationError

__all__ = ["NOT_STARTED", "assign_sps_ids", "check_distinct", "ipc_location", "step_views"]

#: Steps an order update that no longer lists them discontinues (RAD TF-2 4.13: the update replaces
#: the scheduled steps); a step started or done is kept, as the modality has worked on it.
NOT_STARTED = frozenset({"SCHEDULED", "ARRIVED", "READY"})

_STEP_FIELDS = tuple(StepRecord.model_fields)


def step_views(record: OrderRecord) -> list[OrderRecord]:
    """One order record per step: the order's fields with that step's step fields (no ``steps``).

    Without ``steps`` the record itself is its one step.
    """
    if not record.steps:
        return [record]
    # The order's HL7 nulls of step fields are not any listed step's (nulls are only read at the top level).
    cleared = tuple(n for n in record.cleared if n not in _STEP_FIELDS)
    return [
        record.model_copy(update={**{name: getattr(step, name) for name in _STEP_FIELDS}, "steps": [],
                                  "cleared": cleared})
        for step in record.steps
    ]


def ipc_location(ipc_sequences: Sequence[int], index: int, field: int, fallback: int = 1) -> ErrorLocation:
    """ERR-2 for field ``field`` of the ``index``-th step's IPC (its sequence in the whole message)."""
    sequence = ipc_sequences[index] if index < len(ipc_sequences) else fallback + index
    return ErrorLocation("IPC", sequence, field)


def check_distinct(record: OrderRecord, ipc_sequences: Sequence[int], sequence: int = 1) -> None:
    """AE 205 at the IPC-4 of the first step that repeats an SPS ID given earlier in the same order."""
    seen: set[str] = set()
    for index, step in enumerate(record.steps):
        sps_id = step.scheduled_procedure_step_id
        if not sps_id:
            continue
        if sps_id in seen:
            raise HL7ApplicationError(
                205, f"ORC group {sequence}: step {index + 1} repeats Scheduled Procedure Step ID {sps_id!r} "
                "(IPC-4): each IPC of a requested procedure is its own step and needs its own id",
                ipc_location(ipc_sequences, index, 4, sequence))
        seen.add(sps_id)


def assign_sps_ids(views: Sequence[OrderRecord], rp_id: str) -> list[str]:
    """The SPS ID of each step: its own, else one generated from ``rp_id`` (see the module docstring)."""
    taken = {v.scheduled_procedure_step_id for v in views if v.scheduled_procedure_step_id}
    out: list[str] = []
    counter = 1
    for view in views:
        if view.scheduled_procedure_step_id:
            out.append(view.scheduled_procedure_step_id)
            continue
        candidate = rp_id if counter == 1 else f"{rp_id}.{counter}"
        while candidate in taken:
            counter += 1
            candidate = f"{rp_id}.{counter}"
        counter += 1
        taken.add(candidate)
        out.append(candidate)
    return out
