"""Load-time checks of paths and names, each problem with a suggestion.

HL7 paths are checked against hl7apy's reference structures for the file's
``hl7_version`` (segment exists, field number exists); Z-segments are site
defined and pass. DICOM keywords are checked against pydicom's data
dictionary (PS3.6). hl7apy is used here only, never per message.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from engine.hl7.structure import known_segments, reference_version, segment_fields
from engine.mapping.paths import Hl7Path
from engine.mapping.targets import dicom_vr

__all__ = ["check_dicom_path", "check_hl7_path", "suggest"]


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
    return None


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
