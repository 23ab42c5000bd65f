"""The bytes of a report document (an OBX of value type ED, HL7 v2.5.1 2.A.24) from its ED-4 encoding and ED-5.

One reading for the reports handler (which says at receipt when a document cannot be read) and the FHIR
Binary that serves it (engine.fhir.binary). ED-4 (HL7 table 0299): ``Base64``, ``Hex``, or ``A`` (no
encoding: the data is the text itself, as the message carried it, escapes decoded). Text data keeps the
characters received: ASCII as ASCII, else Latin-1 when every character is one (as before), else UTF-8; the
charset is said with it so that a client reads the characters that were sent.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

__all__ = ["DocumentBytes", "document_bytes"]


@dataclass(frozen=True, slots=True)
class DocumentBytes:
    """A document's bytes and, for text data with characters beyond ASCII, the charset they are in."""

    data: bytes
    charset: str = ""  # "" (binary data, or ASCII), "iso-8859-1" or "utf-8"


def document_bytes(encoding: str, data: str) -> DocumentBytes | None:
    """The bytes ED-5 ``data`` stands for under ED-4 ``encoding``; None when Base64/Hex data cannot be decoded."""
    kind = encoding.strip().upper()
    try:
        if kind in ("BASE64", "B64"):
            return DocumentBytes(base64.b64decode(data + "=="))  # line breaks, missing padding: tolerated
        if kind == "HEX":
            return DocumentBytes(bytes.fromhex(data))
    except ValueError:
        return None
    if data.isascii():
        return DocumentBytes(data.encode("ascii"))
    try:
        return DocumentBytes(data.encode("latin-1"), "iso-8859-1")
    except UnicodeEncodeError:  # Greek, Cyrillic, CJK in a UTF-8 message: was left out of presentedForm
        return DocumentBytes(data.encode("utf-8"), "utf-8")
