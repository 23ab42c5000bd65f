"""Writing values into outputs: records, DICOM datasets, FHIR resources, HL7 messages.

* record: field names of ``engine.domain.records`` (nested with ``fields``);
* dicom: keyword paths ``ScheduledProcedureStepSequence[0].Modality`` into a
  JSON-like dict (sequences are lists of dicts), see :func:`to_dataset`;
* fhir: element paths ``name[0].family`` into a resource dict, validated with
  ``fhir.resources.R4B`` (FHIR R4B is R4-compatible for these resources);
* hl7v2: paths ``PID-5.1`` into segments, escaped (HL7 v2.5.1 2.7).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from engine.hl7.er7 import Separators, escape
from engine.mapping.paths import Hl7Path

__all__ = ["dicom_vr", "put", "render_hl7", "to_dataset"]

Steps = tuple[tuple[str, int | None], ...]


def put(obj: dict[str, Any], steps: Steps, value: Any) -> None:
    """Set ``value`` at ``steps`` in ``obj``, creating dicts and list items on the way."""
    node: Any = obj
    for depth, (name, index) in enumerate(steps):
        last = depth == len(steps) - 1
        if index is None:
            if last:
                node[name] = value
                return
            node = node.setdefault(name, {})
            continue
        items = node.setdefault(name, [])
        while len(items) <= index:
            items.append({})
        if last:
            items[index] = value
            return
        node = items[index]


def dicom_vr(keyword: str) -> str | None:
    """The VR of a DICOM keyword from pydicom's data dictionary (None if unknown)."""
    tag = tag_for_keyword(keyword)
    return None if tag is None else str(dictionary_VR(tag))


def to_dataset(description: dict[str, Any]) -> Dataset:
    """Build a pydicom Dataset from a dicom-target output (keyword → value or list of dicts)."""
    ds = Dataset()
    for keyword, value in description.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            setattr(ds, keyword, [to_dataset(item) for item in value])
        elif isinstance(value, list):
            setattr(ds, keyword, value)
        else:
            setattr(ds, keyword, "" if value is None else value)
    return ds


#: field → repetition → component → sub-component → escaped text
Grid = dict[int, dict[int, dict[int, dict[int, str]]]]


def _grid(values: list[tuple[Hl7Path, str]], seps: Separators) -> dict[str, Grid]:
    grid: dict[str, Grid] = {}
    for path, value in values:
        fields = grid.setdefault(path.segment, {})
        comps = fields.setdefault(path.field or 1, {}).setdefault(path.repetition or 1, {})
        comps.setdefault(path.component or 1, {})[path.subcomponent or 1] = _escaped(value, seps)
    return grid


def _escaped(value: str, seps: Separators) -> str:
    """``escape`` only when needed: most values hold no delimiter, line break or escape character."""
    return escape(value, seps) if _specials(seps).search(value) else value


#: Delimiter sets whose pattern is kept. Each inbound message brings its own (MSH-1/MSH-2), so a
#: sender writing a new set each time must not grow the process: the least recently used goes.
SPECIALS_KEPT = 64


@lru_cache(maxsize=SPECIALS_KEPT)
def _specials(seps: Separators) -> re.Pattern[str]:
    return re.compile(f"[{re.escape(seps.field + seps.encoding_characters)}\r\n]")


def _segment_text(name: str, fields: Grid, seps: Separators) -> str:
    top = max(fields, default=0)
    cells = [_field_text(reps, seps) if (reps := fields.get(n)) else "" for n in range(1, top + 1)]
    if name == "MSH":
        cells = [seps.encoding_characters, *cells[2:]]
    return seps.field.join([name, *cells])


def render_hl7(
    values: list[tuple[Hl7Path, str]],
    segment_order: list[str],
    seps: Separators,
    repeated: dict[str, list[list[tuple[Hl7Path, str]]]] | None = None,
) -> str:
    """ER7 text for an hl7v2-target output: each value escaped into its place.

    ``repeated``: segments written once per item (one OBX per report line), in
    the place ``segment_order`` gives their name; none when the list is empty.
    """
    grid = _grid(values, seps)
    repeated = repeated or {}
    lines = []
    for name in segment_order or [*grid, *(n for n in repeated if n not in grid)]:
        if name in repeated:
            lines += [_segment_text(name, _grid(item, seps).get(name, {}), seps) for item in repeated[name]]
        else:
            lines.append(_segment_text(name, grid.get(name, {}), seps))
    return "\r".join(lines) + "\r"


def _field_text(reps: dict[int, dict[int, dict[int, str]]], seps: Separators) -> str:
    if len(reps) == 1 and 1 in reps:  # the usual field: one repetition
        return _repetition_text(reps[1], seps)
    if not reps:
        return ""
    return seps.repetition.join(_repetition_text(reps.get(r, {}), seps) for r in range(1, max(reps) + 1))


def _repetition_text(comps: dict[int, dict[int, str]], seps: Separators) -> str:
    if len(comps) == 1 and 1 in comps and len(first := comps[1]) == 1 and 1 in first:
        return first[1]  # a plain value
    parts = []
    for c in range(1, max(comps, default=0) + 1):
        subs = comps.get(c)
        if not subs:
            parts.append("")
        elif len(subs) == 1 and 1 in subs:  # a component without sub-components
            parts.append(subs[1])
        else:
            parts.append(_joined(subs, seps.subcomponent))
    return seps.component.join(parts)


def _joined(subs: dict[int, str], separator: str) -> str:
    return separator.join(subs.get(n, "") for n in range(1, max(subs, default=0) + 1))
