"""Built-in transforms for HL7 data types: TS/DTM dates and XPN/XCN names.

* TS (HL7 v2.5.1 2.A.77): ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``;
  converted to DICOM DA/TM/DT (PS3.5 6.2) and FHIR ``dateTime``. A value with
  an offset is moved to the site time zone; one without is taken as site time.
  Values are read by :func:`engine.hl7.dtm.read_dtm`, so the forms outside the
  grammar that validation lets through (and notes) are read the same way here;
  what cannot be read one way is 102.
* XPN (2.A.88) ``family^given^middle^suffix^prefix`` → DICOM PN (PS3.5 6.2.1)
  ``family^given^middle^prefix^suffix``: components 4 and 5 swap
  (../shared/reference/RADIOLOGY_HL7_DICOM.md section 3).
* XCN (2.A.89) is an id followed by an XPN: ``id^family^given^…``.

A whole field sent as ``""`` never reaches a transform (engine.mapping.null);
a ``""`` component inside a composite reads as an empty component.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

from engine.errors import HL7ApplicationError
from engine.hl7.dicom_text import pn_component
from engine.hl7.dtm import Timestamp, read_dtm
from engine.hl7.er7 import Separators, unescape
from engine.mapping.null import HL7_NULL
from engine.mapping.transforms import TransformContext, register_transform

__all__ = ["ts_to_dt", "ts_to_fhir", "xpn_to_pn"]


def _first_part(value: str, seps: Separators) -> str:
    """TS may arrive as a component with a precision after it; keep the time itself."""
    return value.split(seps.component, 1)[0].split(seps.subcomponent, 1)[0].strip()


def _read(value: str, ctx: TransformContext) -> Timestamp | None:
    """The timestamp in ``value`` (None when empty or a null component), read as tolerantly as
    validation reads it."""
    text = _first_part(value, ctx.seps)
    return read_dtm(text).value if text and text != HL7_NULL else None


def ts_to_dt(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """HL7 TS → DICOM DT in the site time zone, without offset (YYYYMMDD[HHMMSS[.F]])."""
    stamp = _read(value, ctx)
    if stamp is None:
        return ""
    if len(stamp.digits) <= 8:
        return stamp.digits
    # With an offset the instant moves to site time; without one it is site time already.
    out = _digits(stamp.moment().astimezone(ctx.timezone)) if stamp.offset else stamp.digits.ljust(14, "0")
    fraction = stamp.fraction[:6]  # DICOM DT holds microseconds at most (PS3.5 6.2)
    return f"{out}.{fraction}" if fraction else out


def _digits(moment: datetime) -> str:
    """YYYYMMDDHHMMSS without strftime (several times cheaper per message)."""
    return (
        f"{moment.year:04d}{moment.month:02d}{moment.day:02d}"
        f"{moment.hour:02d}{moment.minute:02d}{moment.second:02d}"
    )


def _ts_to_da(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """HL7 TS → DICOM DA: the date as written (first 8 digits, checked).

    A year or a year and month (HL7 DT/DTM reduced precision, a birth date whose day is unknown)
    is error 102, or with the argument ``keep`` given back as written (``YYYY``, ``YYYYMM``) for a
    handler to decide on (the patients handler keeps no birth date from it and says so).
    """
    stamp = _read(value, ctx)
    if stamp is None:
        return ""
    if len(stamp.digits) < 8:
        if args and args[0] == "keep":
            return stamp.digits
        raise HL7ApplicationError(102, f"{stamp.standard!r} has no day; DICOM DA needs YYYYMMDD")
    return stamp.digits[:8]


def _local(moment: datetime, ctx: TransformContext) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=ctx.timezone)
    return moment.astimezone(ctx.timezone)


def _ts_to_tm(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """HL7 TS → DICOM TM (HHMMSS[.F]) in the site time zone; "" when no time is given."""
    dt = ts_to_dt(value, args, ctx)
    return dt[8:]


def ts_to_fhir(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """HL7 TS → FHIR R4 dateTime (YYYY, YYYY-MM, YYYY-MM-DD or full with the site offset)."""
    stamp = _read(value, ctx)
    if stamp is None:
        return ""
    if len(stamp.digits) <= 8:
        return Timestamp(stamp.digits).iso()  # a FHIR date carries no offset
    return _local(stamp.moment(), ctx).isoformat(timespec="seconds")


def xpn_to_pn(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """HL7 XPN → DICOM PN, swapping suffix and prefix (components 4 and 5); DICOM's delimiters
    inside a component become spaces (engine.hl7.dicom_text)."""
    seps = ctx.seps
    comps = [_name_part(c, seps) for c in value.split(seps.component)]
    comps = (comps + [""] * 5)[:5]
    family, given, middle, suffix, prefix = comps
    return "^".join([family, given, middle, prefix, suffix]).rstrip("^")


def _name_part(component: str, seps: Separators) -> str:
    """One XPN component as a PN component; a null component (``""``) is empty: the name is
    rebuilt from the components given (docs/mapping.md "Explicit null")."""
    text = component.split(seps.subcomponent, 1)[0]
    return "" if text == HL7_NULL else pn_component(unescape(text, seps))


#: XPN-8 name representation code (HL7 table 0465) -> the DICOM PN component group (PS3.5 6.2.1.2).
_GROUPS = {"": 0, "A": 0, "I": 1, "P": 2}


#: XPN-7 name types (HL7 table 0200) a group's name is taken from only when it has no other: A alias.
_LAST_RESORT = ("A",)


def _xpn_groups_to_pn(value: list[str] | str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """Every XPN repetition (``PID-5(*)``) -> one DICOM PN with its component groups.

    XPN-8 (table 0465) says which group a repetition is: A (or empty) alphabetic, I ideographic,
    P phonetic (``Yamada^Tarou=山田^太郎=やまだ^たろう``). Of several for one group the first is
    taken whose XPN-7 name type (table 0200) is not one of ``args`` (default ``A``, alias): an
    alias listed before the legal name is not the patient's name; HL7 sends the legal name first
    (v2.5.1 2.A.88), and real feeds that send a display name first mean it as the name to show.
    A group with nothing else takes its first repetition of those types. One repetition gives what
    ``xpn_to_pn`` gives.
    """
    reps = value if isinstance(value, list) else [value]
    last_resort = {str(a).strip().upper() for a in args} if args else set(_LAST_RESORT)
    chosen: list[str | None] = [None, None, None]
    fallback: list[str | None] = [None, None, None]
    c = ctx.seps.component
    for rep in reps:
        if not rep:
            continue
        comps = rep.split(c, 8)
        group = _GROUPS.get(comps[7].strip().upper() if len(comps) > 7 else "")
        if group is None:  # an unknown representation: not a name group DICOM knows
            continue
        slot = fallback if len(comps) > 6 and comps[6].strip().upper() in last_resort else chosen
        if slot[group] is None:
            slot[group] = rep
    picked = [rep if rep is not None else other for rep, other in zip(chosen, fallback, strict=True)]
    groups = [xpn_to_pn(rep, args, ctx) if rep is not None else "" for rep in picked]
    return "=".join(groups).rstrip("=")


def _pn_group(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """Component group N of a DICOM PN (1 alphabetic, 2 ideographic, 3 phonetic); group 1 of a
    name that has only other groups is the first group it has (an HL7 name needs one)."""
    groups = value.split("=")
    n = int(args[0])
    if n == 1 and not groups[0]:
        return next((g for g in groups if g), "")
    return groups[n - 1] if 0 < n <= len(groups) else ""


def _xcn_to_pn(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """HL7 XCN (id^family^given^middle^suffix^prefix) → DICOM PN; the id is dropped."""
    rest = value.split(ctx.seps.component, 1)
    return xpn_to_pn(rest[1], args, ctx) if len(rest) > 1 else ""


def _ndl_to_pn(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """HL7 NDL (OBR-32/34, 2.A.50) → DICOM PN.

    Component 1 is a CNN ``id&family&given&middle&suffix&prefix``; feeds that
    send a plain XPN in its place (as IHE test data does) are read as XPN, and
    feeds that send an XCN (``D1458838^Long^Lata^T.``, as reporting systems
    often do) as XCN: a first component with a digit in it, followed by a
    name, is an id, never a family name.
    """
    seps = ctx.seps
    first, _, rest = value.partition(seps.component)
    if seps.subcomponent not in first:
        if rest and not rest.startswith(seps.component) and any(c.isdigit() for c in first):
            return _xcn_to_pn(value, args, ctx)
        return xpn_to_pn(value, args, ctx)
    subs = first.split(seps.subcomponent)[1:]
    return xpn_to_pn(seps.component.join(subs), args, ctx)


def _uid_from_text(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """A UID derived from the value, ``2.25.<UUIDv5 as decimal>`` (PS3.5 B.2): same value, same UID.

    Used when an order carries no Study Instance UID, so that a resent order
    gets the same UID (RADIOLOGY_HL7_DICOM.md section 3); an optional
    argument is mixed in (e.g. the sending facility).
    """
    if not value:
        return ""
    seed = f"{args[0]}|{value}" if args else value
    return f"2.25.{uuid5_int(seed)}"


_OID_NAMESPACE = uuid.NAMESPACE_OID.bytes


def uuid5_int(name: str) -> int:
    """``uuid.uuid5(uuid.NAMESPACE_OID, name).int`` (RFC 4122 4.3) without building UUID objects."""
    digest = hashlib.sha1(_OID_NAMESPACE + name.encode("utf-8"), usedforsecurity=False).digest()
    value = int.from_bytes(digest[:16])
    return (value & ~(0xF000 << 64) & ~(0xC000 << 48)) | (5 << 76) | (0x8000 << 48)


register_transform("ts_to_da", _ts_to_da, max_args=1)
register_transform("ts_to_tm", _ts_to_tm)
register_transform("ts_to_dt", ts_to_dt)
register_transform("ts_to_fhir", ts_to_fhir)
register_transform("xpn_to_pn", xpn_to_pn)
register_transform("xpn_groups_to_pn", _xpn_groups_to_pn, max_args=20, on_list=True)
register_transform("pn_group", _pn_group, min_args=1)
register_transform("xcn_to_pn", _xcn_to_pn)
register_transform("ndl_to_pn", _ndl_to_pn)
register_transform("uid_from_text", _uid_from_text, max_args=1)
