"""Repeating groups: which segments a path sees while one output is built.

With ``for_each: ORC`` every ORC starts a group that runs to the next ORC
(HL7 v2.5.1 4.4.1, the ORDER group of ORM^O01/OMI^O23). A segment that occurs
at or after the first anchor (OBR, TQ1, IPC, ZDS …) is read from the group
only, so the second order never borrows the first order's accession number;
segments only found before the first anchor (MSH, PID, PV1) are read from the
whole message. ADT^A40 uses ``for_each: PID`` for its PID/MRG pairs.

``until`` names segments that end the groups where one follows the first anchor:
nothing from it on is read, neither by a group nor from the whole message. OMG^O19's
ORDER group may hold a PRIOR_RESULT (HL7 v2.5.1 4.4.6: PID, PV1, then ORC/OBR/OBX of an
earlier order and its result); read greedily, as HL7 parsers read the grammar, every ORC
after that PID belongs to it. The shipped order mapping reads its orders with
``for_each: ORC, until: [PID, PV1]`` (its PID is optional) and its patient with
``for_each: PID, until: [ORC]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from engine.hl7.er7 import Message, Segment

__all__ = ["groups", "message_scope"]


def message_scope(message: Message) -> dict[str, list[Segment]]:
    """Segment id → every segment of that id, in message order."""
    return _scope_of(message.segments)


def _scope_of(segments: Sequence[Segment]) -> dict[str, list[Segment]]:
    index: dict[str, list[Segment]] = {}
    for seg in segments:
        index.setdefault(seg.name, []).append(seg)
    return index


def groups(
    message: Message, anchor: str | None, whole: dict[str, list[Segment]] | None = None,
    until: tuple[str, ...] = (),
) -> list[dict[str, list[Segment]]]:
    """One scope per ``anchor`` occurrence (a single whole-message scope without anchor), ending
    before the first of the ``until`` segments that follows the first anchor.

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
    if until:
        stop = next((i for i in range(starts[0] + 1, len(segments)) if segments[i].name in until), None)
        if stop is not None:
            segments = segments[:stop]
            starts = [i for i in starts if i < stop]
            whole = _scope_of(segments)
    scoped = {seg.name for seg in segments[starts[0] :]}
    bounds = [*starts, len(segments)]
    out: list[dict[str, list[Segment]]] = []
    for start, end in itertools.pairwise(bounds):
        scope = {name: segs for name, segs in whole.items() if name not in scoped}
        for seg in segments[start:end]:
            scope.setdefault(seg.name, []).append(seg)
        out.append(scope)
    return out
