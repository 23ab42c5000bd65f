"""FHIR date/time values: formatting domain values, and reading search values as UTC ranges.

Index and search ranges are half-open ``[low, high)`` in fixed-width UTC text
(``2026-12-05T10:15:30.000000Z``), so SQL compares them as strings on every backend.
A value's range is its precision: ``2026-12`` is the whole month (FHIR R4 search 3.1.1.5.4,
"date parameters are ranges"). Values without a zone are in the site's time zone.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, tzinfo

__all__ = ["MAX", "MIN", "DateRange", "dicom_datetime", "fhir_date", "instant", "search_range"]

DateRange = tuple[str, str]

MIN = "0001-01-01T00:00:00.000000Z"
MAX = "9999-12-31T23:59:59.999999Z"

_SEARCH = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.(?P<f>\d{1,9}))?)?"
    r"(?P<z>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def instant(moment: datetime) -> str:
    """``moment`` as fixed-width UTC text (also a valid FHIR ``instant``).

    Not ``strftime("%Y…")``: glibc writes years before 1000 without leading zeros (``999-01-01``),
    which then sort after ``1980-…`` as text.
    """
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _add_months(start: datetime, months: int) -> datetime:
    year, month = divmod(start.month - 1 + months, 12)
    return start.replace(year=start.year + year, month=month + 1)


def _zone(text: str | None, site: tzinfo) -> tzinfo:
    if not text:
        return site
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    from datetime import timezone
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def search_range(value: str, site: tzinfo) -> DateRange:
    """The UTC range a search value (``YYYY`` … ``YYYY-MM-DDThh:mm:ss.fff+zz:zz``) covers.

    Raises ValueError on anything else (the API answers 400).
    """
    match = _SEARCH.match(value)
    if match is None:
        raise ValueError(f"not a FHIR date: {value!r}")
    g = match.groupdict()
    zone = _zone(g["z"], site)
    start = datetime(int(g["y"]), int(g["m"] or 1), int(g["d"] or 1), int(g["H"] or 0), int(g["M"] or 0),
                     int(g["S"] or 0), int((g["f"] or "0").ljust(6, "0")[:6]), tzinfo=zone)
    try:
        if g["m"] is None:
            end = start.replace(year=start.year + 1)
        elif g["d"] is None:
            end = _add_months(start, 1)
        elif g["H"] is None:
            end = start + timedelta(days=1)
        elif g["S"] is None:
            end = start + timedelta(minutes=1)
        elif g["f"] is None:
            end = start + timedelta(seconds=1)
        else:
            end = start + timedelta(microseconds=1)
    except (OverflowError, ValueError):  # the range of a value at the end of year 9999 ends at MAX
        return _clamped(start), MAX
    return _clamped(start), _clamped(end)


def _clamped(moment: datetime) -> str:
    """:func:`instant`, with moments whose UTC time falls outside years 1-9999 clamped to MIN/MAX."""
    try:
        return instant(moment)
    except (OverflowError, ValueError):
        return MIN if moment.year == 1 else MAX


def fhir_date(dicom_date: str) -> str | None:
    """A DICOM DA / HL7 date ``YYYYMMDD`` as a FHIR ``date`` (``YYYY-MM-DD``); None if not a real date."""
    text = dicom_date.strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:])).isoformat()
    except ValueError:
        return None


def dicom_datetime(dicom_date: str, dicom_time: str, site: tzinfo) -> tuple[str, DateRange] | None:
    """A FHIR ``dateTime`` (with the site's offset) and its UTC range from a DICOM date and time.

    Date only: the date (``2026-12-05``), ranging over that day in the site zone. None if the
    date is not a real date (values arrive as sent; the field is then left out).
    """
    day = fhir_date(dicom_date)
    if day is None:
        return None
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", dicom_time.strip())
    if match is None or int(match.group(1)) > 23:
        return day, search_range(day, site)
    hh, mm, ss = int(match.group(1)), int(match.group(2) or 0), int(match.group(3) or 0)
    if mm > 59 or ss > 59:
        return day, search_range(day, site)
    moment = datetime.fromisoformat(day).replace(hour=hh, minute=mm, second=ss, tzinfo=site)
    text = moment.isoformat(timespec="seconds")
    return text, (instant(moment), instant(moment + timedelta(seconds=1)))
