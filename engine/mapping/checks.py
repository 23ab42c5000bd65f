"""Load-time checks of paths and names, each problem with a suggestion.

HL7 paths are checked against hl7apy's reference structures for the file's
``hl7_version`` (segment exists, field number exists); Z-segments are site
defined and pass. DICOM keywords are checked against pydicom's data
dictionary (PS3.6). hl7apy is used here only, never per message.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from functools import lru_cache

from engine.hl7.structure import known_segments, reference_version, segment_fields
from engine.mapping.paths import Hl7Path
from engine.mapping.targets import dicom_vr

__all__ = ["check_dicom_path", "check_hl7_path", "component_count", "suggest"]

#: HL7 v2.5.1 2.A primitive data types: no components.
_PRIMITIVES = frozenset({"ST", "TX", "FT", "ID", "IS", "NM", "SI", "DT", "TM", "DTM", "GTS", "SNM"})


def suggest(name: str, choices: Iterable[str]) -> str:
    """``did you mean X?`` for the closest choice, or a short list of the valid ones."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    shown = ", ".join(options[:12]) + (" …" if len(options) > 12 else "")
    return f"known: {shown}" if options else "none are defined"


def check_hl7_path(path: Hl7Path, version: str) -> str | None:
    """A problem text (with suggestion) when ``path`` does not exist in ``version``; else None."""
    if path.relative or path.segment.startswith("Z"):
        return None
    ref = reference_version(version)
    if ref is None:
        return f"HL7 version {version!r} is unknown (use e.g. 2.3.1, 2.5.1, 2.8)"
    segments = known_segments(ref)
    if path.segment not in segments:
        hint = suggest(path.segment, segments)
        return f"segment {path.segment} is not defined in HL7 v{ref} ({hint})"
    fields = segment_fields(ref, path.segment)
    if path.field is not None and fields and path.field not in fields:
        return (
            f"{path.segment}-{path.field} does not exist in HL7 v{ref} "
            f"({path.segment} has fields 1 to {max(fields)})"
        )
    if path.field is not None and path.component is not None and path.field in fields:
        return _check_component(
            path, ref, fields[path.field].datatype, fields[path.field].long_name
        )
    return None


def _check_component(path: Hl7Path, ref: str, datatype: str, long_name: str) -> str | None:
    count = component_count(ref, datatype)
    if count is None or (path.component or 1) <= max(count, 1):
        return None
    shape = f"has {count} components" if count else "has no components"
    return (
        f"{path.segment}-{path.field} ({long_name.replace('_', ' ').lower()}) is {datatype} "
        f"in HL7 v{ref}, which {shape}; component {path.component} does not exist"
    )


@lru_cache(maxsize=512)
def component_count(version: str, datatype: str) -> int | None:
    """Components of ``datatype`` in hl7apy's reference data (0 = primitive; None if unknown)."""
    try:
        module = importlib.import_module(f"hl7apy.v{version.replace('.', '_')}.datatypes")
    except ImportError:
        return None
    structs = getattr(module, "DATATYPES_STRUCTS", {})
    if datatype in structs:
        return len(structs[datatype])
    return 0 if datatype in _PRIMITIVES else None


def check_dicom_path(steps: tuple[tuple[str, int | None], ...]) -> str | None:
    """A problem text when a keyword is unknown or an indexed step is not a sequence."""
    for depth, (keyword, index) in enumerate(steps):
        vr = dicom_vr(keyword)
        if vr is None:
            return f"{keyword} is not a DICOM keyword (PS3.6) ({_keyword_hint(keyword)})"
        if (index is not None or depth < len(steps) - 1) and vr != "SQ":
            return f"{keyword} is not a sequence (VR {vr}); only SQ attributes take [index]"
    return None


def _keyword_hint(keyword: str) -> str:
    from pydicom.datadict import keyword_dict

    return suggest(keyword, keyword_dict)
