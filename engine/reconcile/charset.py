"""Which SpecificCharacterSet (0008,0005) a header needs once coerced values are written (PS3.5 6.1).

A header keeps its character set when every value written can be encoded in it;
otherwise it becomes ``ISO_IR 192`` (UTF-8, which represents everything), and the
caller re-encodes the header's other text values accordingly. Code extension
(ISO 2022, several values) is kept only for ASCII values: whether an arbitrary
value fits the declared escape sequences is not worth guessing.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.charset import python_encoding

__all__ = ["UTF8", "fits", "needed_charset", "single_byte"]

UTF8 = "ISO_IR 192"
#: The character sets of more than one byte a character (PS3.3 C.12.1.1.2): the single-value ones and the
#: code extension terms of Table C.12-4. Every other one is one byte a character. pydicom names Python's
#: shift_jis codec for ISO_IR 13 (JIS X 0201), which also encodes kanji, in two bytes: those do not fit.
_MULTI_BYTE = frozenset({UTF8, "GB18030", "GBK", "ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149",
                         "ISO 2022 IR 58"})


def single_byte(term: str) -> bool:
    """True when every character of the character set ``term`` (one SpecificCharacterSet value) is one byte."""
    return term not in _MULTI_BYTE


def _terms(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # type: ignore[attr-defined]


def fits(text: str, charset: object) -> bool:
    """True when ``text`` can be encoded in the SpecificCharacterSet value ``charset``."""
    if text.isascii():
        return True
    terms = [t.strip() for t in _terms(charset)]
    if len(terms) != 1 or terms[0] in ("", "ISO_IR 6") or terms[0].startswith("ISO 2022"):
        return False  # the default repertoire is ASCII; code extension: see the module docstring
    codec = python_encoding.get(terms[0])
    if codec is None:
        return False
    try:
        encoded = text.encode(codec)
    except (UnicodeError, LookupError):
        return False
    return not single_byte(terms[0]) or len(encoded) == len(text)


def needed_charset(current: object, written: Iterable[str]) -> object:
    """``current`` when every written value fits it, else :data:`UTF8`."""
    return current if all(fits(text, current) for text in written) else UTF8
