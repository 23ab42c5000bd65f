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

Reports (ORU^R01 OBX text) keep their backslashes: their text is not a DICOM value.
"""

from __future__ import annotations

__all__ = ["pn_component", "safe_value"]

_PN = str.maketrans({"\\": " ", "^": " ", "=": " "})


def pn_component(text: str) -> str:
    """One component of a person name, unescaped: DICOM's PN delimiters become spaces."""
    return text.translate(_PN) if ("\\" in text or "^" in text or "=" in text) else text


def safe_value(text: str) -> str:
    """A value of a DICOM text VR other than LT/ST/UT: a backslash (value delimiter) becomes '/'."""
    return text.replace("\\", "/") if "\\" in text else text
