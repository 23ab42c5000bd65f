"""Validating a tokenized message before it is applied (HL7 v2.5.1 2.9.2).

The checks answer the questions the original acknowledgment mode asks, in
order, and raise the error that decides the ACK:

1. Is this an HL7 message at all (MSH first, sane encoding characters,
   segment ids of three upper-case letters or digits)?            AR / AE 100
2. Processing id, version, message type and event accepted?       AR 202/203/200/201
3. Control id present?                                            AE 101
4. Control segments (MSA, ERR, BHS …) where the structure has none
   (or, in "strict" mode, any segment the structure forbids)?     AE 100
5. Key date/time and numeric fields that do not parse
   (or, in "all" mode, every typed field)?                        AE 102

Segments a version does not define (Z-segments, or later versions' segments
such as PRT in a 2.5.1 message) are allowed: real feeds carry them.

Timestamps outside the standard grammar are a policy (``timestamps``). A
"strict" channel answers them AE 102. A "lenient" one (the default) reads
every form :func:`engine.hl7.dtm.read_dtm` can read one way only and returns
a note saying so; a value it cannot read is AE 102 where the engine uses it
(birth date, scheduled start …) and only a note in the informational header
fields of :data:`INFORMATIONAL_TIMESTAMPS` (MSH-7, EVN-2, ORC-9). The notes
are kept with the message.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from engine.errors import ErrorLocation, HL7ApplicationError, HL7Error, HL7Reject
from engine.hl7.dtm import Reading, read_dtm
from engine.hl7.er7 import Message, Segment, pick
from engine.hl7.structure import (
    FieldDef,
    known_segments,
    reference_version,
    segment_fields,
    structure_segments,
)

__all__ = ["INFORMATIONAL_TIMESTAMPS", "KEY_COMPONENTS", "AcceptPolicy", "validate"]

#: Message control segments: outside an acknowledgment or batch structure they
#: mean two messages were glued together ("control" structure checking).
CONTROL_SEGMENTS = frozenset({"MSH", "MSA", "ERR", "BHS", "BTS", "FHS", "FTS", "QAK", "UAC"})

#: The fields whose data types the engine relies on; checked by default ("key").
#: Real feeds put free text into many other typed fields, so "all" is opt-in.
KEY_FIELDS: dict[str, frozenset[int]] = {
    "MSH": frozenset({7}),
    "EVN": frozenset({2}),
    "PID": frozenset({1, 7, 29}),
    "MRG": frozenset(),
    "ORC": frozenset({9}),
    "OBR": frozenset({1, 7}),
    "TQ1": frozenset({1, 7, 8}),
    "OBX": frozenset({1}),
}

#: Timestamp components inside composite key fields: TQ-4, the start date/time of ORC-7 and
#: OBR-27, which feeds before v2.5 (no TQ1) use for the scheduled start.
KEY_COMPONENTS: dict[str, tuple[tuple[int, int], ...]] = {"ORC": ((7, 4),), "OBR": ((27, 4),)}

#: Timestamps the engine keeps but decides nothing on: a lenient channel notes one it cannot
#: read instead of refusing a message that is otherwise what the sender meant.
INFORMATIONAL_TIMESTAMPS = frozenset({("MSH", 7), ("EVN", 2), ("ORC", 9)})

_TIMESTAMP_TYPES = frozenset({"DTM", "TS", "DT"})

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
#: Every segment id of a message at once, joined with CR (the ids themselves hold no CR).
_SEGMENT_IDS = re.compile(r"[A-Z][A-Z0-9]{2}(?:\r[A-Z][A-Z0-9]{2})*")
_DTM = re.compile(r"^\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,4})?)?)?)?)?)?(?:[+-]\d{4})?$")
_DT = re.compile(r"^\d{4}(?:\d{2}(?:\d{2})?)?$")
_TM = re.compile(r"^\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,4})?)?)?(?:[+-]\d{4})?$")
_NM = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_SI = re.compile(r"^\d+$")


def _valid_dtm(value: str) -> bool:
    if not _DTM.match(value):
        return False
    month = value[4:6]
    day = value[6:8]
    return (not month or "01" <= month <= "12") and (not day or "01" <= day <= "31")


_CHECKS: dict[str, Callable[[str], bool]] = {
    "DTM": _valid_dtm,
    "TS": _valid_dtm,
    "DT": lambda v: bool(_DT.match(v)) and _valid_dtm(v),
    "TM": lambda v: bool(_TM.match(v)),
    "NM": lambda v: bool(_NM.match(v.strip())),
    "SI": lambda v: bool(_SI.match(v.strip())),
}


@dataclass(frozen=True, slots=True)
class AcceptPolicy:
    """What a channel accepts; anything else is answered AR.

    ``message_types`` are patterns over ``CODE^TRIGGER`` (``ADT^*``, ``ORM^O01``,
    ``*``); ``versions`` are patterns over MSH-12 (``2.*``).
    """

    message_types: Sequence[str] = ("*",)
    processing_ids: Sequence[str] = ("P", "T", "D")
    versions: Sequence[str] = ("2.*",)
    structure: str = "control"  # "none" | "control" | "strict"
    datatypes: str = "key"  # "none" | "key" | "all"
    timestamps: str = "lenient"  # "lenient" | "strict"


def validate(message: Message, policy: AcceptPolicy) -> list[str]:
    """Raise ``HL7Reject``/``HL7ApplicationError`` for the first problem found.

    Returns the notes on what a lenient policy tolerated (empty for a standard message).
    """
    notes: list[str] = []
    _check_envelope(message, notes)
    _check_acceptance(message, policy)
    if not message.control_id:
        raise HL7ApplicationError(101, "MSH-10 message control id is missing", _loc("MSH", 1, 10))
    version = reference_version(message.version)
    if version is None:
        return notes
    if policy.structure != "none":
        _check_structure(message, version, strict=policy.structure == "strict")
    if policy.datatypes != "none":
        reader = _Timestamps(policy.timestamps == "lenient", notes)
        _check_datatypes(message, version, policy.datatypes == "key", reader)
    return notes


def _loc(segment: str, sequence: int, field: int | None = None, comp: int | None = None) -> ErrorLocation:
    return ErrorLocation(segment, sequence, field, comp)


def _check_envelope(message: Message, notes: list[str]) -> None:
    msh = message.msh
    if msh is None:
        first = message.segments[0].name[:3] if message.segments else ""
        raise HL7Reject(100, f"message does not start with MSH (found {first!a})", _loc("MSH", 1))
    seps = message.seps
    encoding = msh.field(2)
    chars = seps.field + encoding
    if not _sane_delimiters(chars):
        raise HL7Reject(100, f"invalid encoding characters {encoding!a}", _loc("MSH", 1, 2))
    if len(encoding) == 5 and (reference_version(message.version) or "0") < "2.7":
        # Senders that write v2.7's MSH-2 whatever MSH-12 says: the fifth character can only be
        # the truncation character, which changes nothing in how the message is read.
        notes.append(f"MSH-2 {encoding!r} read with {encoding[4]!r} as the truncation character of v2.7")
    if message.trigger_from_evn:
        notes.append(f"MSH-9.2 empty: trigger event {message.trigger_from_evn!r} read from EVN-1")
    names = [seg.name for seg in message.segments]
    if not _SEGMENT_IDS.fullmatch("\r".join(names)):  # one scan; the loop below only says where
        counts: dict[str, int] = {}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
            if not _SEGMENT_ID.match(name):
                raise HL7ApplicationError(
                    100, f"invalid segment id {name[:12]!a}", _loc(name[:3] or "?", counts[name])
                )
    if "MSH" in names[1:]:
        raise HL7ApplicationError(100, "second MSH inside one message", _loc("MSH", 2))


@lru_cache(maxsize=256)
def _sane_delimiters(chars: str) -> bool:
    """MSH-1 + MSH-2: 5 or 6 distinct characters, none alphanumeric (one sender sends the same ones)."""
    return len(chars) in (5, 6) and len(set(chars)) == len(chars) and not any(c.isalnum() for c in chars)


@lru_cache(maxsize=256)
def _pattern(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled regex for a list of shell-style patterns."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


def _matches(value: str, patterns: Sequence[str]) -> bool:
    key = patterns if isinstance(patterns, tuple) else tuple(patterns)
    return _pattern(key).match(value) is not None


def _check_acceptance(message: Message, policy: AcceptPolicy) -> None:
    pid = message.processing_id
    if not _matches(pid, policy.processing_ids):
        raise HL7Reject(202, f"unsupported processing id {pid!r}", _loc("MSH", 1, 11))
    version = message.version
    if not version or not _matches(version, policy.versions):
        raise HL7Reject(203, f"unsupported version id {version!r}", _loc("MSH", 1, 12))
    code, trigger = message.message_code, message.trigger_event
    if not code:
        raise HL7Reject(200, "MSH-9 message type is missing", _loc("MSH", 1, 9, 1))
    if _matches(message.message_type, policy.message_types):
        return
    accepted = f" (accepted here: {', '.join(policy.message_types)})"  # wrong port or channel? says which types
    if _matches(code, [p.split("^")[0] for p in policy.message_types]):
        raise HL7Reject(201, f"unsupported event code {trigger!r} for {code}{accepted}", _loc("MSH", 1, 9, 2))
    raise HL7Reject(200, f"unsupported message type {code!r}{accepted}", _loc("MSH", 1, 9, 1))


def _structure_name(message: Message, version: str) -> str:
    declared = message.message_structure
    if declared and structure_segments(version, declared) is not None:
        return declared
    return f"{message.message_code}_{message.trigger_event}"


def _check_structure(message: Message, version: str, strict: bool) -> None:
    allowed = structure_segments(version, _structure_name(message, version))
    if allowed is None:
        return
    defined = known_segments(version) if strict else CONTROL_SEGMENTS
    counts: dict[str, int] = {}
    for seg in message.segments:
        counts[seg.name] = counts.get(seg.name, 0) + 1
        if seg.name in defined and seg.name not in allowed:
            raise HL7ApplicationError(
                100,
                f"segment {seg.name} is not part of {_structure_name(message, version)}",
                _loc(seg.name, counts[seg.name]),
            )


def _check_datatypes(message: Message, version: str, key_only: bool, reader: _Timestamps) -> None:
    checked = _checked_segments(version) if key_only else None
    counts: dict[str, int] = {}
    for seg in message.segments:
        name = seg.name
        typed, components = checked.get(name, _NOTHING) if checked is not None else _all_checks(version, name)
        if not (typed or components):
            continue  # counted only where a location may be reported: segments of the same name agree
        sequence = counts[name] = counts.get(name, 0) + 1
        if typed:
            _check_segment(seg, typed, sequence, reader)
        if components:
            _check_components(seg, components, sequence, reader)


#: A field to check: its number, the check, whether it is a TS (read from its first component), its definition.
_Check = tuple[int, Callable[[str], bool], bool, FieldDef]
_NOTHING: tuple[tuple[_Check, ...], tuple[tuple[int, int], ...]] = ((), ())


def _checks(typed: tuple[tuple[int, FieldDef], ...]) -> tuple[_Check, ...]:
    return tuple((n, _CHECKS[spec[0]], spec[0] == "TS", spec) for n, spec in typed)


@lru_cache(maxsize=64)
def _checked_segments(version: str) -> dict[str, tuple[tuple[_Check, ...], tuple[tuple[int, int], ...]]]:
    """Key checks: segment id → its typed key fields and its timestamp components (one dict lookup a segment)."""
    names = set(KEY_FIELDS) | set(KEY_COMPONENTS)
    return {name: (_checks(_typed_fields(version, name, True)), KEY_COMPONENTS.get(name, ())) for name in names}


@lru_cache(maxsize=4096)
def _all_checks(version: str, name: str) -> tuple[tuple[_Check, ...], tuple[tuple[int, int], ...]]:
    """Every typed field of segment ``name`` and its timestamp components ("all" data types)."""
    return _checks(_typed_fields(version, name, False)), KEY_COMPONENTS.get(name, ())


@lru_cache(maxsize=4096)
def _typed_fields(version: str, segment: str, key_only: bool) -> tuple[tuple[int, FieldDef], ...]:
    """The fields of ``segment`` that have a check, in order (MSH-1/2 are the delimiters)."""
    wanted = KEY_FIELDS.get(segment, frozenset()) if key_only else None
    return tuple(
        (n, f) for n, f in segment_fields(version, segment).items()
        if f[0] in _CHECKS and (n > 2 or segment != "MSH") and (wanted is None or n in wanted)
    )  # fmt: skip


def _check_segment(seg: Segment, typed: tuple[_Check, ...], sequence: int, reader: _Timestamps) -> None:
    fields = seg.fields
    count = len(fields)
    seps = seg.seps
    for number, check, is_ts, spec in typed:
        if number >= count:
            continue
        written = fields[number]
        if not written:
            continue
        for rep in written.split(seps.repetition) if seps.repetition in written else (written,):
            value = pick(rep, seps, 1) if is_ts else rep
            if not value or value == '""' or check(value):
                continue
            location = _loc(seg.name, sequence, number, 1 if is_ts else None)
            error = HL7ApplicationError(102, f"{seg.name}-{number} ({spec[1]}) is not a valid {spec[0]}", location)
            if spec[0] not in _TIMESTAMP_TYPES:
                raise error
            reader.tolerate(value, error, _Field(seg.name, sequence, number), date_only=spec[0] == "DT")


def _check_components(
    seg: Segment, components: tuple[tuple[int, int], ...], sequence: int, reader: _Timestamps
) -> None:
    seps = seg.seps
    for number, component in components:
        written = seg.field(number)
        if not written:  # the common case for OBR-27 (v2.5 senders use TQ1): nothing to split
            continue
        for rep in written.split(seps.repetition) if seps.repetition in written else (written,):
            value = pick(rep, seps, component)
            value = pick(value, seps, 1, 1) if seps.subcomponent in value else value
            if not value or value == '""' or _valid_dtm(value):
                continue
            where = _Field(seg.name, sequence, number, component)
            location = _loc(seg.name, sequence, number, component)
            error = HL7ApplicationError(102, f"{where.path} (start date/time) is not a valid TS", location)
            reader.tolerate(value, error, where)


@dataclass(frozen=True, slots=True)
class _Field:
    """Where a timestamp stands, named in notes as a field path (``PID-7``, ``ORC(2)-7.4``)."""

    segment: str
    sequence: int
    number: int
    component: int | None = None

    @property
    def path(self) -> str:
        occurrence = f"({self.sequence})" if self.sequence > 1 else ""
        component = f".{self.component}" if self.component else ""
        return f"{self.segment}{occurrence}-{self.number}{component}"

    @property
    def informational(self) -> bool:
        return (self.segment, self.number) in INFORMATIONAL_TIMESTAMPS and self.component is None


@dataclass(slots=True)
class _Timestamps:
    """The timestamp policy of one validation run and the notes it collects."""

    lenient: bool
    notes: list[str]

    def tolerate(self, value: str, error: HL7Error, where: _Field, date_only: bool = False) -> None:
        """Note ``value`` (outside the standard grammar) as read or ignored, or raise ``error``."""
        if not self.lenient:
            raise error
        try:
            reading = read_dtm(value)
        except HL7Error as exc:
            if not where.informational:
                raise HL7ApplicationError(102, f"{error.text}: {exc.text}", error.location) from None
            self.notes.append(f"{where.path} {exc.text}; ignored, the field is informational")
            return
        if date_only and len(reading.value.digits) > 8:
            reading = Reading(reading.value, (*reading.tolerated, "a time in a date (DT) field"))
        if reading.tolerated:
            self.notes.append(reading.note(where.path, value))
