"""Reading HL7 date/time values (DTM, TS, DT; HL7 v2.5.1 2.A.21, 2.A.22, 2.A.77) as a tolerant reader.

The standard grammar is ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``.
Real senders write forms outside it that can still be read only one way;
:func:`read_dtm` reads those too and says what it tolerated, so that the
engine can keep a note with the message:

==================================  =============================================
written                             tolerated because
==================================  =============================================
``20261205123045123``               14 digits are the grammar's longest form, so
                                    what follows can only be the fraction of a
                                    second (Java ``yyyyMMddHHmmssSSS``)
``1994050216163360``                the same with hundredths
``20261205123045.123456``           a longer fraction than the 4 digits allowed
``" 20261205123045 "``              spaces around the value
``202612051230+01``, ``+01:00``     ISO 8601 offsets without minutes or with ':'
``20261205123045Z``, ``UTC``        UTC named instead of written as +0000
``2017-04-25 07:31:13.123456``      ISO 8601 extended form: '-' and ':' fix the
                                    order of the parts
``20261205T123045``                 ISO 8601 basic form with 'T'
``20261205123045,5``                ISO 8601 comma as decimal sign
==================================  =============================================

Refused, with the reason (HL7 table 0357 code 102): an odd number of digits
(``196203520``: which digit is missing?), slashed dates (``08/05/1942``:
month or day first depends on the sender's locale), month names, values the
calendar does not have (``20260230``, hour 24, second 60, year 0000), a
fraction without seconds, offsets beyond ±14:00. Where the value is only
informational the caller may ignore a refusal; where it is used it must not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from engine.errors import HL7ApplicationError

__all__ = ["Reading", "Timestamp", "read_dtm"]

#: The standard grammar; a value it matches needs no tolerance (the calendar is checked separately).
_STANDARD = re.compile(r"(\d{4}(?:\d{2}){0,5})(?:\.(\d{1,4}))?([+-]\d{4})?")
_COMPACT = re.compile(
    r"(?P<date>\d+)(?:T(?P<time>\d+))?(?:(?P<sep>[.,])(?P<frac>\d+))?(?P<space> ?)(?P<zone>[+-][\d:]+|Z|UTC|GMT)?"
)
_EXTENDED = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})(?:-(?P<d>\d{2})(?:[T ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?)?)?"
    r"(?:(?P<sep>[.,])(?P<frac>\d+))?(?P<space> ?)(?P<zone>[+-][\d:]+|Z|UTC|GMT)?"
)
_OFFSET = re.compile(r"([+-])(\d{2})(:?)(\d{2})?")
_PRECISIONS = frozenset({4, 6, 8, 10, 12, 14})
#: Fraction digits read beyond the 14 of YYYYMMDDHHMMSS (nanoseconds at most).
_MAX_FRACTION = 9


@dataclass(frozen=True, slots=True)
class Timestamp:
    """A date/time as the standard writes it: the digits given, a fraction, an offset.

    ``digits`` is ``YYYY``, ``YYYYMM``, … up to ``YYYYMMDDHHMMSS`` (its length is
    the precision); ``fraction`` the digits after the point; ``offset``
    ``+HHMM``/``-HHMM`` or "" when the sender gave none.
    """

    digits: str
    fraction: str = ""
    offset: str = ""

    @property
    def standard(self) -> str:
        """The value in the standard grammar (the fraction cut to the 4 digits it allows)."""
        fraction = f".{self.fraction[:4]}" if self.fraction else ""
        return f"{self.digits}{fraction}{self.offset}"

    def moment(self) -> datetime:
        """The earliest instant the value names: naive without offset, aware with one."""
        d, n = self.digits, len(self.digits)
        return datetime(
            int(d[:4]), int(d[4:6]) if n > 4 else 1, int(d[6:8]) if n > 6 else 1,
            int(d[8:10]) if n > 8 else 0, int(d[10:12]) if n > 10 else 0, int(d[12:14]) if n > 12 else 0,
            int(self.fraction[:6].ljust(6, "0")) if self.fraction else 0,
            _zone(self.offset) if self.offset else None,
        )

    def iso(self) -> str:
        """ISO 8601 at the precision given, e.g. ``2026-12-05T12:30:45.123+01:00``."""
        d = self.digits
        text = "-".join(p for p in (d[:4], d[4:6], d[6:8]) if p)
        if len(d) > 8:
            text += "T" + ":".join(p for p in (d[8:10], d[10:12], d[12:14]) if p)
        if self.fraction:
            text += f".{self.fraction}"
        if self.offset:
            text += f"{self.offset[:3]}:{self.offset[3:]}"
        return text


@dataclass(frozen=True, slots=True)
class Reading:
    """What :func:`read_dtm` read, and what it tolerated to read it (empty: standard)."""

    value: Timestamp
    tolerated: tuple[str, ...] = ()

    def note(self, where: str, written: str) -> str:
        """A line for the message's notes: ``MSH-7 '…' read as … (what was tolerated)``."""
        return f"{where} {written!r} read as {self.value.iso()} ({'; '.join(self.tolerated)})"


#: Longer than any form read here ("2017-04-25 07:31:13.123456789 +01:00" is 36): refused unread.
_MAX_LENGTH = 40


def read_dtm(text: str) -> Reading:
    """Read ``text`` as an HL7 date/time; raise HL7ApplicationError 102 when it cannot be read.

    A value in the standard grammar comes back with nothing tolerated. The
    component and sub-component of a TS (its degree of precision) are the
    caller's to split off.
    """
    if len(text) > _MAX_LENGTH:  # and so never kept in the cache
        raise _unreadable(text, f"it is longer than {_MAX_LENGTH} characters")
    return _read(text)


@lru_cache(maxsize=4096)  # readings are immutable; birth dates and schedule slots repeat
def _read(text: str) -> Reading:
    standard = _STANDARD.fullmatch(text)
    if standard is None or (standard[2] and len(standard[1]) != 14):
        return _read_tolerantly(text)
    digits, fraction, offset = standard.groups()
    stamp = Timestamp(digits, fraction or "", offset or "")
    _check_calendar(stamp, text)
    return Reading(stamp)


def _read_tolerantly(text: str) -> Reading:
    tolerated: list[str] = []
    value = text.strip()
    if value != text:
        tolerated.append("spaces around the value")
    if not value:
        raise _unreadable(text, "it is blank")
    if (m := _COMPACT.fullmatch(value)) is not None:
        digits, fraction = _compact(m, text, tolerated)
    elif (m := _EXTENDED.fullmatch(value)) is not None:
        digits, fraction = _extended(m, text, tolerated)
    else:
        raise _unreadable(text, "it is not in a date/time form that can be read one way only")
    if m["space"]:
        tolerated.append("a space before the offset")
    stamp = Timestamp(digits, fraction, _read_offset(m["zone"], text, tolerated))
    _check_calendar(stamp, text)
    return Reading(stamp, tuple(tolerated))


def _compact(m: re.Match[str], text: str, tolerated: list[str]) -> tuple[str, str]:
    """YYYYMMDD[T]HHMMSS… with everything that can follow; returns (digits, fraction)."""
    digits, time, fraction = m["date"], m["time"], m["frac"]
    if time is not None:
        if len(digits) != 8:
            raise _unreadable(text, "the date before 'T' is not YYYYMMDD")
        tolerated.append("'T' between date and time")
        digits += time
    if fraction is None and 14 < len(digits) <= 14 + _MAX_FRACTION:
        tolerated.append("fraction without '.'")
        return digits[:14], digits[14:]
    if len(digits) not in _PRECISIONS:
        raise _unreadable(text, f"{len(digits)} digit(s) are not YYYY[MM[DD[HH[MM[SS]]]]]")
    return digits, _fraction(m, digits, text, tolerated)


def _extended(m: re.Match[str], text: str, tolerated: list[str]) -> tuple[str, str]:
    """ISO 8601 extended form, YYYY-MM[-DD[(T| )HH:MM[:SS]]] and what can follow."""
    tolerated.append("ISO 8601 form")
    digits = "".join(p for p in (m["y"], m["mo"], m["d"], m["h"], m["mi"], m["s"]) if p)
    return digits, _fraction(m, digits, text, tolerated)


def _fraction(m: re.Match[str], digits: str, text: str, tolerated: list[str]) -> str:
    fraction = m["frac"]
    if fraction is None:
        return ""
    if len(digits) != 14:
        raise _unreadable(text, "a fraction of a second needs the seconds")
    if m["sep"] == ",":
        tolerated.append("',' as decimal sign")
    if len(fraction) > _MAX_FRACTION:
        raise _unreadable(text, f"a fraction of {len(fraction)} digits")
    if len(fraction) > 4:
        tolerated.append(f"fraction of {len(fraction)} digits")
    return fraction


#: Names of UTC that cannot mean anything else.
_UTC_NAMES = frozenset({"Z", "UTC", "GMT"})


def _read_offset(zone: str | None, text: str, tolerated: list[str]) -> str:
    """``+HHMM`` from the offset as written ("" when there is none)."""
    if zone is None:
        return ""
    if zone in _UTC_NAMES:
        tolerated.append(f"{zone!r} for +0000")
        return "+0000"
    m = _OFFSET.fullmatch(zone)
    if m is None:
        raise _unreadable(text, f"the offset {zone!r} is not +/-HHMM")
    sign, hours, colon, minutes = m.groups()
    if minutes is None:
        tolerated.append("offset without minutes")
    elif colon:
        tolerated.append("':' in the offset")
    if int(hours) > 14 or int(minutes or 0) > 59:
        raise _unreadable(text, f"the offset {zone!r} is out of range")
    return f"{sign}{hours}{minutes or '00'}"


def _check_calendar(stamp: Timestamp, text: str) -> None:
    if stamp.offset and (int(stamp.offset[1:3]) > 14 or int(stamp.offset[3:]) > 59):
        raise _unreadable(text, f"the offset {stamp.offset} is out of range")
    try:
        stamp.moment()
    except ValueError as exc:  # e.g. "month must be in 1..12": the form is right, the calendar says no
        raise HL7ApplicationError(102, f"{text[:40]!r} is not a valid date/time: {exc}") from None


@lru_cache(maxsize=128)
def _zone(offset: str) -> timezone:
    """``+0100`` → a fixed-offset tzinfo (cached: feeds use a handful of offsets)."""
    sign = -1 if offset[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))


def _unreadable(text: str, reason: str) -> HL7ApplicationError:
    return HL7ApplicationError(102, f"{text[:40]!r} cannot be read as a date/time: {reason}")
