"""HL7 v2 ER7 ("pipe and hat") tokenizing: the receive path's parser.

A :class:`Message` keeps the decoded text and splits segments once; fields,
repetitions, components and sub-components are split on demand with ``str``
methods, which is two orders of magnitude cheaper than hl7apy's parser
(../shared/reference/PERFORMANCE.md). Values are returned *escaped* as they
stand on the wire; :func:`unescape` turns them into plain text (HL7 v2.5.1
2.7, escape sequences).

Field numbering follows the standard: for every segment ``field(n)`` is
``SEG-n``; for MSH, MSH-1 is the field separator and MSH-2 the encoding
characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from engine.hl7.charset import codec_for
from engine.hl7.structure import defined_segments

__all__ = [
    "Message",
    "Segment",
    "Separators",
    "escape",
    "normalize_segment_breaks",
    "unescape",
]

_FIELD_SEPARATOR = re.compile(r"(?:MSH|BHS|FHS)([^\w\r\n])")


#: Most lines (``\.sp n\``) or spaces (``\.sk n\``) one formatting command gives.
_MAX_SKIP = 100


@dataclass(frozen=True, slots=True)
class Separators:
    """The delimiters from MSH-1/MSH-2 (HL7 v2.5.1 2.5.4)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""
    #: MSH-18's codec (Message): how ``\\Xhh\\`` bytes that are not UTF-8 are read ("": Latin-1)
    hex_charset: str = ""

    @property
    def valid(self) -> bool:
        """Distinct, non-alphanumeric delimiters (HL7 v2.5.1 2.5.4): safe to write with."""
        return _valid_delimiters(self.field + self.encoding_characters)

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it is written."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation

    @classmethod
    def from_msh(cls, field_sep: str, encoding: str) -> Separators:
        """Build from MSH-1 and MSH-2; missing characters keep their defaults (one object per pair)."""
        return _separators(field_sep, encoding[:5])

    @classmethod
    def _build(cls, field_sep: str, encoding: str) -> Separators:
        defaults = cls()
        chars = list(encoding[:5])
        names = ["component", "repetition", "escape", "subcomponent", "truncation"]
        values = {n: getattr(defaults, n) for n in names}
        for name, ch in zip(names, chars, strict=False):
            values[name] = ch
        return cls(field=field_sep, **values)


@lru_cache(maxsize=64)
def _separators(field_sep: str, encoding: str) -> Separators:
    return Separators._build(field_sep, encoding)


def _with_hex_charset(seps: Separators, msh: str) -> Separators:
    """``seps`` knowing the codec MSH-18 (its first repetition) names, when it names one."""
    fields = msh.split(seps.field)
    name = fields[17].split(seps.repetition)[0].strip() if len(fields) > 17 else ""
    codec = codec_for(name) if name else None
    return replace(seps, hex_charset=codec) if codec else seps


@lru_cache(maxsize=64)
def _valid_delimiters(chars: str) -> bool:
    return len(set(chars)) == len(chars) and not any(c.isalnum() or c in "\r\n" for c in chars)


def normalize_segment_breaks(text: str) -> str:
    """Turn LF, CRLF and LFCR segment terminators into the standard CR.

    CR, CRLF and LFCR always end a segment. A lone LF, which the standard does not
    use as a terminator, ends one only where a segment can follow: the id of a
    segment some HL7 version defines (or a Z-segment) and the field separator, a
    blank line, or the end. Anywhere else it is a line break inside a field (a
    report's text sent without ``\\.br\\``, whose line "NAD|" is not a segment) and is kept.
    """
    if "\n" not in text:
        return text
    text = text.replace("\r\n", "\r").replace("\n\r", "\r")
    if "\n" not in text:
        return text
    found = _FIELD_SEPARATOR.search(text)
    starts = _segment_start(found[1] if found else "|")
    pieces = text.split("\n")
    out = [pieces[0]]
    for piece in pieces[1:]:
        out.append("\r" if _starts_segment(piece, starts) else "\n")
        out.append(piece)
    return "".join(out)


@lru_cache(maxsize=16)
def _segment_start(field_separator: str) -> re.Pattern[str]:
    """What may follow a lone LF that ends a segment (HL7 v2.5.1 2.5.2: segment id, then separator)."""
    return re.compile(rf"([A-Z][A-Z0-9]{{2}}){re.escape(field_separator)}|[ \t]*(?:[\r\n]|$)")


def _starts_segment(piece: str, starts: re.Pattern[str]) -> bool:
    """Whether the text after a lone LF begins a segment (or a blank line)."""
    follows = starts.match(piece)
    if follows is None:
        return False
    segment = follows[1]
    return segment is None or segment[0] == "Z" or segment in defined_segments()


class Segment:
    """One segment, split into fields on construction."""

    __slots__ = ("fields", "name", "seps")

    def __init__(self, text: str, seps: Separators) -> None:
        self.seps = seps
        parts = text.split(seps.field)
        self.name = parts[0]
        if self.name in ("MSH", "FHS", "BHS"):
            parts.insert(1, seps.field)
        self.fields = parts

    def field(self, n: int) -> str:
        """SEG-n as escaped text ("" when absent)."""
        fields = self.fields
        return fields[n] if 0 < n < len(fields) else ""

    @property
    def field_count(self) -> int:
        """Index of the last field present."""
        return len(self.fields) - 1

    def repetitions(self, n: int) -> list[str]:
        """Every repetition of SEG-n (MSH-2 is never split)."""
        value = self.field(n)
        if n <= 2 and self.name in ("MSH", "FHS", "BHS"):
            return [value]
        return value.split(self.seps.repetition) if value else []

    def value(self, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        """The escaped value at SEG-n(rep).comp.sub, all indices 1-based."""
        if n <= 2 and self.name in ("MSH", "FHS", "BHS"):
            return self.field(n)
        reps = self.repetitions(n)
        if rep > len(reps):
            return ""
        return pick(reps[rep - 1], self.seps, comp, sub)

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, {len(self.fields) - 1} fields)"


def pick(repetition: str, seps: Separators, comp: int = 1, sub: int = 1) -> str:
    """Component ``comp`` and sub-component ``sub`` of one field repetition."""
    if comp > 1 or seps.component in repetition:
        comps = repetition.split(seps.component)
        if comp > len(comps):
            return ""
        repetition = comps[comp - 1]
    if sub > 1 or seps.subcomponent in repetition:
        subs = repetition.split(seps.subcomponent)
        if sub > len(subs):
            return ""
        repetition = subs[sub - 1]
    return repetition


class Message:
    """A tokenized HL7 v2 message.

    Construction normalizes segment terminators and drops empty lines; it does
    not validate (see ``engine.hl7.validate``). ``text`` is the normalized
    message with CR terminators.
    """

    __slots__ = ("_index", "_msh_values", "control_id", "message_code", "message_type", "segments", "seps", "text",
                 "trigger_event", "trigger_from_evn", "version")

    def __init__(self, text: str) -> None:
        text = normalize_segment_breaks(text).lstrip("\ufeff")
        lines = [line for line in text.split("\r") if line.strip()]
        self.text = "\r".join(lines) + "\r" if lines else ""
        first = lines[0] if lines else ""
        if first.startswith("MSH") and len(first) >= 4:
            fsep = first[3]
            enc = first[4:].split(fsep, 1)[0]
            self.seps = Separators.from_msh(fsep, enc)
            if self.seps.escape + "X" in text:  # hex data: read in the message's character set
                self.seps = _with_hex_charset(self.seps, first)
        else:
            self.seps = Separators()
        self.segments = [Segment(line, self.seps) for line in lines]
        self._index: dict[str, list[Segment]] | None = None
        self._msh_values: dict[tuple[int, int], str] = {}
        self.trigger_from_evn = self._evn_trigger()
        # The header fields every stage asks for (filters, validation, handlers, the store, the ACK),
        # read once: attributes, not properties, on the receive path's hot loop.
        self.message_code: str = self._msh(9, 1).strip()
        """MSH-9.1, e.g. ``ORM``."""
        self.trigger_event: str = self._msh(9, 2).strip()
        """MSH-9.2, e.g. ``O01``."""
        self.message_type: str = (f"{self.message_code}^{self.trigger_event}" if self.trigger_event
                                  else self.message_code)
        """``CODE^TRIGGER`` as used in filters and the store."""
        self.control_id: str = self._msh(10).strip()
        """MSH-10."""
        self.version: str = self._msh(12, 1).strip()
        """MSH-12.1."""

    def _evn_trigger(self) -> str:
        """Before v2.3 MSH-9 was the message code alone (``ADT``) and EVN-1 named the event, which
        older senders still do. With MSH-9.1 given, MSH-9.2 empty and EVN-1 an event code, the parsed
        MSH-9.2 takes EVN-1 (the text stays as received); returns that code, else ""."""
        msh = self.segments[0] if self.segments and self.segments[0].name == "MSH" else None
        if msh is None or len(msh.fields) < 10:
            return ""
        cs = self.seps.component
        comps = msh.fields[9].split(cs)
        if not comps[0].strip() or (len(comps) > 1 and comps[1].strip()):
            return ""
        evn = next((seg for seg in self.segments if seg.name == "EVN"), None)
        event = evn.field(1).strip() if evn is not None else ""
        if not _EVENT_CODE.fullmatch(event):
            return ""
        msh.fields[9] = cs.join([comps[0], event, *comps[2:]])
        return event

    def all(self, name: str) -> list[Segment]:
        """Every segment named ``name``, in message order."""
        if self._index is None:
            index: dict[str, list[Segment]] = {}
            for seg in self.segments:
                index.setdefault(seg.name, []).append(seg)
            self._index = index
        return self._index.get(name, [])

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        """The ``occurrence``-th segment named ``name`` (1-based), or None."""
        found = self.all(name)
        return found[occurrence - 1] if 0 < occurrence <= len(found) else None

    def value(self, name: str, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        """Escaped value at the first ``name`` segment's field n."""
        seg = self.segment(name)
        return seg.value(n, rep, comp, sub) if seg else ""

    # MSH accessors, named after the standard's fields.
    @property
    def msh(self) -> Segment | None:
        """The MSH segment, if the message starts with one."""
        seg = self.segments[0] if self.segments else None
        return seg if seg is not None and seg.name == "MSH" else None

    def _msh(self, n: int, comp: int = 1) -> str:
        cached = self._msh_values.get((n, comp))
        if cached is None:
            msh = self.msh
            cached = unescape(msh.value(n, 1, comp), self.seps) if msh else ""
            self._msh_values[(n, comp)] = cached
        return cached

    @property
    def sending_application(self) -> str:
        return self._msh(3)

    @property
    def sending_facility(self) -> str:
        return self._msh(4)

    @property
    def receiving_application(self) -> str:
        return self._msh(5)

    @property
    def receiving_facility(self) -> str:
        return self._msh(6)

    @property
    def message_structure(self) -> str:
        """MSH-9.3, e.g. ``ORM_O01`` (often absent before v2.4)."""
        return self._msh(9, 3).strip()

    @property
    def processing_id(self) -> str:
        """MSH-11.1."""
        return self._msh(11, 1).strip()

    @property
    def charset(self) -> str:
        """MSH-18 (first repetition)."""
        return self._msh(18).strip()


#: An HL7 trigger event code (table 0003): A01, O01, R01 ...
_EVENT_CODE = re.compile(r"[A-Z][0-9A-Z]{2}")

_ESCAPE_NAMES = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition", "E": "escape"}


def unescape(value: str, seps: Separators) -> str:
    """Resolve HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\ \\.sp n\\ \\.sk n\\).

    ``\\Xhh…\\`` is read as UTF-8 when its bytes are UTF-8, else in the character set
    MSH-18 names (``seps.hex_charset``: ``\\XB1\\`` is "ą" in an 8859/2 message), else one
    Latin-1 character a byte. Other formatting commands (``.in``, ``.ti``, ``.fi``, ``.ce``),
    highlighting (``\\H\\``/``\\N\\``) and character-set switches are dropped;
    unknown or unterminated sequences are kept as written (HL7 v2.5.1 2.7).
    """
    esc = seps.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    i = 0
    length = len(value)
    while i < length:
        ch = value[i]
        end = value.find(esc, i + 1) if ch == esc else -1
        if end < 0:
            out.append(ch)
            i += 1
            continue
        out.append(_escape_sequence(value[i + 1 : end], seps, value[i : end + 1]))
        i = end + 1
    return "".join(out)


def _escape_sequence(body: str, seps: Separators, raw: str) -> str:
    if body in _ESCAPE_NAMES:
        return str(getattr(seps, _ESCAPE_NAMES[body]))
    if body == ".br":
        return "\n"
    if body.startswith((".sp", ".sk")):  # 2.7.6: end the line and skip n lines / skip n spaces
        count = body[3:].strip().lstrip("+")
        # ASCII digits only (int() refuses '²', which isdigit() takes), and at most _MAX_SKIP: '\.sp 999999999\'
        # would otherwise be a gigabyte of line breaks from a dozen bytes of message.
        n = min(int(count[:9]), _MAX_SKIP) if count.isascii() and count.isdigit() else 1
        return ("\n" if body[1] == "s" and body[2] == "p" else " ") * max(n, 1)
    if body.startswith("X") and len(body) > 1 and len(body) % 2 == 1:
        try:
            data = bytes.fromhex(body[1:])
        except ValueError:
            return raw
        try:  # several bytes are usually one UTF-8 character; else characters of MSH-18's set, else Latin-1
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        if seps.hex_charset:
            try:
                return data.decode(seps.hex_charset)
            except UnicodeDecodeError:
                pass
        return data.decode("latin-1")
    if body.startswith((".", "H", "N", "C", "M", "Z")):
        return ""
    return raw


def escape(value: str, seps: Separators) -> str:
    """Escape a plain value so it can be written into one component."""
    esc = seps.escape
    out = value.replace(esc, f"{esc}E{esc}") if esc else value
    for ch, code in (
        (seps.field, "F"),
        (seps.component, "S"),
        (seps.subcomponent, "T"),
        (seps.repetition, "R"),
    ):
        out = out.replace(ch, f"{esc}{code}{esc}")
    if seps.truncation:
        out = out.replace(seps.truncation, f"{esc}P{esc}")
    return out.replace("\r", f"{esc}X0D{esc}").replace("\n", f"{esc}.br{esc}")
