"""Repeating groups: which segments a path sees while one output is built.

With ``for_each: ORC`` every ORC starts a group that runs to the next ORC
(HL7 v2.5.1 4.4.1, the ORDER group of ORM^O01/OMI^O23). A segment that occurs
at or after the first anchor (OBR, TQ1, IPC, ZDS …) is read from the group
only, so the second order never borrows the first order's accession number;
segments only found before the first anchor (MSH, PID, PV1) are read from the
whole message. ADT^A40 uses ``for_each: PID`` for its PID/MRG pairs.
"""

from __future__ import annotations

import itertools

from engine.hl7.er7 import Message, Segment

__all__ = ["groups", "message_scope"]


def message_scope(message: Message) -> dict[str, list[Segment]]:
    """Segment id → every segment of that id, in message order."""
    index: dict[str, list[Segment]] = {}
    for seg in message.segments:
        index.setdefault(seg.name, []).append(seg)
    return index


def groups(
    message: Message, anchor: str | None, whole: dict[str, list[Segment]] | None = None
) -> list[dict[str, list[Segment]]]:
    """One scope per ``anchor`` occurrence (a single whole-message scope without anchor).

    ``whole`` is :func:`message_scope` of ``message`` when the caller already has it.
    """
    if whole is None:
        whole = message_scope(message)
    if anchor is None:
        return [whole]
    segments = message.segments
    starts = [i for i, seg in enumerate(segments) if seg.name == anchor]
    if not starts:
        return []
    scoped = {seg.name for seg in segments[starts[0] :]}
    bounds = [*starts, len(segments)]
    out: list[dict[str, list[Segment]]] = []
    for start, end in itertools.pairwise(bounds):
        scope = {name: segs for name, segs in whole.items() if name not in scoped}
        for seg in segments[start:end]:
            scope.setdefault(seg.name, []).append(seg)
        out.append(scope)
    return out
