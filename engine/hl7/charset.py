"""Decoding inbound HL7 bytes by MSH-18 (HL7 table 0211), never losing a message.

Real feeds declare 8859/1 and send UTF-8, or declare nothing and send
Latin-1 (../shared/reference/RADIOLOGY_HL7_DICOM.md section 8). The decoder
reads MSH-18 from the raw bytes, decodes with the declared codec, and when
that fails falls back to the channel's configured charset; bytes that are
valid multi-byte UTF-8 under a single-byte declaration are read as UTF-8
when ``detect_utf8`` is on. The raw bytes are always kept by the caller.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = ["DICOM_CHARSETS", "HL7_CHARSETS", "Decoded", "charset_note", "codec_for", "declared_charset", "decode"]

#: HL7 table 0211 character set names → Python codecs.
HL7_CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "ISO IR6": "ascii",
    "ISO IR14": "shift_jis",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5",
    "BIG-5": "big5",
    "WINDOWS-1252": "cp1252",
}

#: Python codec → DICOM SpecificCharacterSet (0008,0005) for single-byte and UTF-8 sets.
DICOM_CHARSETS: dict[str, str] = {
    "ascii": "ISO_IR 6",
    "latin-1": "ISO_IR 100",
    "iso8859-2": "ISO_IR 101",
    "iso8859-3": "ISO_IR 109",
    "iso8859-4": "ISO_IR 110",
    "iso8859-5": "ISO_IR 144",
    "iso8859-6": "ISO_IR 127",
    "iso8859-7": "ISO_IR 126",
    "iso8859-8": "ISO_IR 138",
    "iso8859-9": "ISO_IR 148",
    "iso8859-15": "ISO_IR 203",
    "utf-8": "ISO_IR 192",
    "gb18030": "GB18030",
}

_BOM = codecs.BOM_UTF8


@dataclass(frozen=True, slots=True)
class Decoded:
    """Decoded text and how it was obtained."""

    text: str
    charset: str  # the Python codec actually used
    declared: str  # MSH-18 as written ("" when absent)
    fallback_used: bool
    replaced: bool = False  # bytes the fallback could not decode became U+FFFD


def declared_charset(raw: bytes) -> str:
    """MSH-18 read straight from the bytes of the first MSH segment."""
    start = raw.find(b"MSH")
    if start < 0 or len(raw) < start + 4:
        return ""
    end = len(raw)
    for terminator in (b"\r", b"\n"):
        pos = raw.find(terminator, start)
        if 0 <= pos < end:
            end = pos
    fsep = raw[start + 3 : start + 4]
    fields = raw[start:end].split(fsep)
    if len(fields) < 18:
        return ""
    rep_sep = fields[1][1:2] or b"~"
    return fields[17].split(rep_sep)[0].decode("latin-1").strip()


def codec_for(name: str) -> str | None:
    """The Python codec an MSH-18 value names (table 0211, else a codec name such as CP1250); None if none."""
    return _codec(name)


def _codec(name: str) -> str | None:
    codec = HL7_CHARSETS.get(name.upper())
    if codec is None and name:
        try:
            info = codecs.lookup(name)
        except LookupError:
            return None
        if not getattr(info, "_is_text_encoding", True):  # hex, base64, zlib, rot13: not a character set
            return None
        codec = info.name
    return codec


def _looks_like_utf8(raw: bytes) -> bool:
    if raw.isascii():
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode(raw: bytes, fallback: str = "latin-1", detect_utf8: bool = True) -> Decoded:
    """Decode ``raw`` by its MSH-18; see the module docstring for the rules."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    declared = declared_charset(raw)
    codec = _codec(declared) if declared else None
    single_byte = codec is None or codec not in ("utf-8", "gb18030", "big5", "euc_kr")
    if detect_utf8 and single_byte and _looks_like_utf8(raw):
        return Decoded(raw.decode("utf-8"), "utf-8", declared, codec is not None)
    if codec is not None:
        try:
            return Decoded(raw.decode(codec), codec, declared, False)
        except UnicodeDecodeError:
            pass
    fallback_codec = _codec(fallback) or "latin-1"
    try:
        text = raw.decode(fallback_codec)
    except UnicodeDecodeError:
        text = raw.decode(fallback_codec, errors="replace")
        return Decoded(text, fallback_codec, declared, True, True)
    return Decoded(text, fallback_codec, declared, codec is not None or bool(declared))


def charset_note(decoded: Decoded) -> str:
    """What the reader did that MSH-18 did not say, for the message's note ("" when it read as declared).

    A tolerant read is kept visible (issue #11): an analyst seeing a wrong name finds here
    that the sender's MSH-18 was not what it sent.
    """
    if not decoded.fallback_used:
        return ""
    said = f"MSH-18 {decoded.declared!r}" if decoded.declared else "MSH-18 empty"
    if decoded.replaced:
        return f"{said}: bytes that {decoded.charset} cannot decode were replaced by U+FFFD (source.charset_fallback)"
    declared = _codec(decoded.declared) if decoded.declared else None
    if decoded.charset == "utf-8" and declared not in (None, "utf-8"):
        return f"{said}, but the bytes are UTF-8: read as UTF-8 (source.detect_utf8)"
    if declared is None:
        return f"{said} is not a character set radbridge knows: read as {decoded.charset} (source.charset_fallback)"
    return f"{said} does not decode these bytes: read as {decoded.charset} (source.charset_fallback)"
