"""HL7 text that becomes a DICOM value: DICOM's delimiters inside it are replaced (one policy, here).

In DICOM a backslash separates the values of every text VR except LT, ST and UT (PS3.5 6.2), and in
a person name (PN) '^' separates components and '=' component groups. HL7 carries them inside a
value escaped (``\\E\\`` a backslash, ``\\S\\`` a component separator) or as is ('='), so
``Smith\\E\\Jones^Ann`` read as is would be the PN ``Smith\\Jones^Ann``: two values, and a PACS shows
"Smith". Written for DICOM, such a character is replaced:

* inside a PN component (PID-5, PV1-8, OBR-16, OBR-32/34 through the ``*_to_pn`` transforms):
  a backslash, '^' and '=' each become a space (``Smith Jones^Ann``);
* in any other value of an order or patient record (descriptions, codes, ids, locations): a
  backslash becomes '/' (``CT HEAD/NECK``), by the orders and patients handlers before anything is
  stored, so the worklist, coerced image headers and status messages all get the same value. The
  one multi-valued field, the Scheduled Station AE Titles, is left as it is: the mapping joins
  the IPC-9 repetitions with backslashes.

No value of these VRs may hold a control character (PS3.5 6.2: only ESC, for ISO 2022, which
radbridge's Unicode text never needs), yet HL7 brings them: ``\\.br\\`` and ``\\.sp\\`` in a
procedure description become line breaks, a Latin-1 feed's tab or a lone LF kept inside a field
(engine.hl7.er7) arrives as is. Each run of them becomes one space and the value is trimmed
(``CT Thorax\\.br\\mit KM`` is ``CT Thorax mit KM``, where the worklist returned the line break),
in a person name's component too.

Reports (ORU^R01 OBX text) keep their backslashes: their text is not a DICOM value.
"""

from __future__ import annotations

import re

__all__ = ["pn_component", "safe_value"]

_PN = str.maketrans({"\\": " ", "^": " ", "=": " "})
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")  # C0, DEL and C1 (U+0085 from a CP1252 "…" read as Latin-1)


def pn_component(text: str) -> str:
    """One component of a person name, unescaped: DICOM's PN delimiters become spaces, and control
    characters too (trimmed, as :func:`safe_value`)."""
    if "\\" in text or "^" in text or "=" in text:
        text = text.translate(_PN)
    if _CONTROLS.search(text) is None:
        return text
    return _CONTROLS.sub(" ", text).strip(" ")


def safe_value(text: str) -> str:
    """A value of a DICOM text VR other than LT/ST/UT: a backslash (value delimiter) becomes '/',
    each run of control characters (line breaks, tabs) one space, trimmed."""
    if "\\" in text:
        text = text.replace("\\", "/")
    if _CONTROLS.search(text) is None:
        return text
    return _CONTROLS.sub(" ", text).strip(" ")
