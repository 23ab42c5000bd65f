"""Modality Worklist matching (PS3.4 Annex K, C.2.2.2): identifier → SQL, row → response.

Pure functions over values: :func:`build_select` turns a C-FIND identifier
into one SQLAlchemy ``Select`` over indexed step columns, and
:func:`build_response` turns one result row into the response identifier
carrying exactly the requested keys (PS3.4 K.6.1.2.2 "return keys"; every
matching key is also a return key). Matching kinds (PS3.4 C.2.2.2):

* universal (empty value, or ``*`` alone) — no condition;
* single value — equality (person names: case per setting);
* wildcard ``*`` ``?`` — ``LIKE`` or, where case matters on SQLite, ``GLOB``;
* range ``D1-D2`` ``-D2`` ``D1-`` for DA/TM/DT, with Scheduled Procedure Step
  Start Date and Time combined into one datetime range (C.2.2.2.5.1);
* list of UIDs (C.2.2.2.2) — ``IN``;
* sequence matching (C.2.2.2.6) inside ScheduledProcedureStepSequence and the
  code sequences;
* multiple values: Scheduled Station AE Title is VM 1-n and matches if any value
  matches (``step_station_aes``).

A non-universal key never matches an entry whose attribute is empty
(C.2.2.2.4 … "zero length").
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import ColumnElement, Select, and_, func, literal, or_, select

from engine.domain.tables import orders, patients, procedure_steps, step_station_aes
from engine.errors import RadbridgeError
from engine.reconcile.charset import single_byte

__all__ = [
    "SPS_SEQUENCE",
    "InvalidQuery",
    "KeySpec",
    "MatchSettings",
    "build_response",
    "build_select",
    "match_clauses",
    "parse_range",
    "requested_keys",
    "response_charset",
    "unsupported_keys",
    "wildcard_to_glob",
    "wildcard_to_like",
]

SPS_SEQUENCE = "ScheduledProcedureStepSequence"
_CODE_ITEM = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
_NAME_VRS = frozenset({"PN"})
_TEXT_VRS = frozenset({"AE", "CS", "LO", "PN", "SH", "LT", "ST", "UT"})


class InvalidQuery(RadbridgeError):
    """The identifier cannot be processed (C-FIND failure 0xC000-0xCFFF)."""


@dataclass(frozen=True, slots=True)
class MatchSettings:
    """The site's matching choices (``worklist:`` settings)."""

    case_sensitive_names: bool = False
    hidden_statuses: tuple[str, ...] = (
        "STARTED",
        "DEPARTED",
        "CANCELED",
        "DISCONTINUED",
        "COMPLETED",
    )
    max_matches: int = 1000
    dialect: str = "sqlite"


@dataclass(frozen=True, slots=True)
class _Attr:
    keyword: str
    tag: int
    vr: str
    column: ColumnElement[Any]


def _attr(keyword: str, column: ColumnElement[Any]) -> _Attr:
    tag = int(tag_for_keyword(keyword) or 0)
    return _Attr(keyword, tag, dictionary_VR(tag), column)


_p, _o, _s = patients.c, orders.c, procedure_steps.c

#: Attributes at the requested-procedure / patient level (PS3.4 K.6.1.2.2, table K.6-1).
TOP_LEVEL: dict[str, _Attr] = {
    a.keyword: a
    for a in (
        _attr("PatientName", _p.patient_name),
        _attr("PatientID", _p.patient_id),
        _attr("IssuerOfPatientID", _p.issuer),
        _attr("PatientBirthDate", _p.birth_date),
        _attr("PatientSex", _p.sex),
        _attr("AccessionNumber", _o.accession_number),
        _attr("StudyInstanceUID", _o.study_instance_uid),
        _attr("RequestedProcedureID", _o.requested_procedure_id),
        _attr("RequestedProcedureDescription", _o.requested_procedure_description),
        _attr("RequestedProcedurePriority", _o.priority),
        _attr("RequestingPhysician", _o.requesting_physician),
        _attr("ReferringPhysicianName", _o.referring_physician_name),
        _attr("AdmissionID", _o.admission_id),
        _attr("CurrentPatientLocation", _p.current_patient_location),  # Visit Status, from ADT PV1-3
        _attr("PlacerOrderNumberImagingServiceRequest", _o.placer_order_number),
        _attr("FillerOrderNumberImagingServiceRequest", _o.filler_order_number),
    )
}

#: Attributes inside the Scheduled Procedure Step Sequence item.
STEP_LEVEL: dict[str, _Attr] = {
    a.keyword: a
    for a in (
        _attr("Modality", _s.modality),
        _attr("ScheduledStationAETitle", _s.scheduled_station_ae_title),
        _attr("ScheduledProcedureStepStartDate", _s.start_date),
        _attr("ScheduledProcedureStepStartTime", _s.start_time),
        _attr("ScheduledPerformingPhysicianName", _s.performing_physician_name),
        _attr("ScheduledProcedureStepDescription", _s.description),
        _attr("ScheduledStationName", _s.scheduled_station_name),
        _attr("ScheduledProcedureStepLocation", _s.location),
        _attr("ScheduledProcedureStepID", _s.sps_id),
        _attr("ScheduledProcedureStepStatus", _s.status),
    )
}

#: Code sequences: keyword → (CodeValue, CodingSchemeDesignator, CodeMeaning) columns.
CODE_SEQUENCES: dict[str, tuple[ColumnElement[Any], ...]] = {
    "RequestedProcedureCodeSequence": (
        _o.procedure_code_value,
        _o.procedure_coding_scheme,
        _o.procedure_code_meaning,
    ),
    "ScheduledProtocolCodeSequence": (
        _s.protocol_code_value,
        _s.protocol_coding_scheme,
        _s.protocol_code_meaning,
    ),
}
_STEP_CODE_SEQUENCES = frozenset({"ScheduledProtocolCodeSequence"})
_SPECIAL = frozenset(
    {
        "ScheduledStationAETitle",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
    }
)


# --- value helpers -------------------------------------------------------------------


def _values(value: Any) -> list[str]:
    """An element value as a list of strings ("" for empty)."""
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if str(v) != ""]
    text = str(value)
    return [text] if text else []


def _is_universal(values: Sequence[str]) -> bool:
    return not values or all(v == "*" for v in values)


def wildcard_to_like(value: str) -> str:
    """A DICOM wildcard pattern (C.2.2.2.3) as a SQL ``LIKE`` pattern with escape ``\\``."""
    out = []
    for ch in value:
        out.append({"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}.get(ch, ch))
    return "".join(out)


def wildcard_to_glob(value: str) -> str:
    """A DICOM wildcard pattern as a SQLite ``GLOB`` pattern (case-sensitive)."""
    return "".join({"[": "[[]", "]": "[]]"}.get(ch, ch) for ch in value)


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _fold(value: str, dialect: str) -> str:
    """Upper-case ``value`` as the database's ``upper()`` does (SQLite folds ASCII only)."""
    if dialect == "sqlite":
        return "".join(c.upper() if c.isascii() else c for c in value)
    return value.upper()


def _text_clause(
    col: ColumnElement[Any], value: str, fold: bool, dialect: str
) -> ColumnElement[bool]:
    if fold:
        col, value = func.upper(col), _fold(value, dialect)
    if not _has_wildcard(value):
        return col == value
    if dialect == "sqlite" and not fold:
        return col.op("GLOB")(wildcard_to_glob(value))
    return col.like(wildcard_to_like(value), escape="\\")


def _string_match(attr: _Attr, values: list[str], settings: MatchSettings) -> ColumnElement[bool]:
    if attr.vr == "UI":
        return attr.column.in_(values)  # list of UID matching, C.2.2.2.2
    fold = attr.vr in _NAME_VRS and not settings.case_sensitive_names
    clauses = [_text_clause(attr.column, v, fold, settings.dialect) for v in values]
    if attr.vr in _NAME_VRS:
        # A name given in one component group (``Yamada^Tarou``) also matches a stored name that
        # has ideographic or phonetic groups after it (``Yamada^Tarou=山田^太郎``).
        clauses += [_text_clause(attr.column, f"{v}=*", fold, settings.dialect)
                    for v in values if v and "=" not in v and not v.endswith("*")]
    return and_(attr.column != "", or_(*clauses))


# --- ranges ----------------------------------------------------------------------------


def parse_range(value: str) -> tuple[str | None, str | None]:
    """``D1-D2`` / ``-D2`` / ``D1-`` / ``D`` → (low, high), None for an open end (C.2.2.2.5)."""
    if value.count("-") > 1:
        raise InvalidQuery("range with more than one '-'")  # the value stays out: it may be a birth date
    if "-" not in value:
        return value, value
    low, high = value.split("-")
    if not low and not high:
        raise InvalidQuery("range with neither end")
    return low or None, high or None


def _digits(value: str, width: int, what: str) -> str:
    text = (
        value.replace(":", "").replace(".", "")
        if width == 8
        else value.split(".")[0].replace(":", "")
    )
    if not (text.isascii() and text.isdigit()) or len(text) > width or len(text) % 2:
        raise InvalidQuery(f"not a {what} value")
    return text


def _bound(value: str | None, width: int, fill: str, what: str) -> str | None:
    if value is None:
        return None
    return _digits(value, width, what).ljust(width, fill)


def _range_clause(
    col: ColumnElement[Any], low: str | None, high: str | None
) -> ColumnElement[bool]:
    parts = [col != ""]
    if low is not None:
        parts.append(col >= low)
    if high is not None:
        parts.append(col <= high)
    return and_(*parts)


def _datetime_bounds(date_value: str, time_value: str) -> tuple[str | None, str | None]:
    """The start_datetime range implied by SPS Start Date (+ Time); (None, None) without a date."""
    if not date_value:
        return None, None
    d_low, d_high = parse_range(date_value)
    t_low, t_high = parse_range(time_value) if time_value else (None, None)
    low, high = _bound(d_low, 8, "0", "date"), _bound(d_high, 8, "9", "date")
    return (
        low + (_bound(t_low, 6, "0", "time") or "000000") if low else None,
        high + (_bound(t_high, 6, "9", "time") or "999999") if high else None,
    )


def _date_time_clause(date_value: str, time_value: str) -> ColumnElement[bool] | None:
    """SPS Start Date and Time: alone, or combined into one datetime range (C.2.2.2.5.1)."""
    if date_value and time_value:
        return _range_clause(_s.start_datetime, *_datetime_bounds(date_value, time_value))
    if date_value:
        d_low, d_high = parse_range(date_value)
        by_date = _range_clause(
            _s.start_date, _bound(d_low, 8, "0", "date"), _bound(d_high, 8, "9", "date")
        )
        # The same range on start_datetime (= start_date + start_time, orders.split_start)
        # lets the database walk its index instead of scanning every step.
        return and_(by_date, _range_clause(_s.start_datetime, *_datetime_bounds(date_value, "")))
    if time_value:
        t_low, t_high = parse_range(time_value)
        return _range_clause(
            _s.start_time, _bound(t_low, 6, "0", "time"), _bound(t_high, 6, "9", "time")
        )
    return None


def _range_match(attr: _Attr, value: str) -> ColumnElement[bool]:
    width = {"DA": 8, "TM": 6}.get(attr.vr, 14)
    try:
        low, high = parse_range(value)
        return _range_clause(
            attr.column, _bound(low, width, "0", attr.vr), _bound(high, width, "9", attr.vr)
        )
    except InvalidQuery as exc:
        raise InvalidQuery(f"{attr.keyword}: {exc}") from exc


# --- identifier → conditions ----------------------------------------------------------


def _attr_clause(
    attr: _Attr, values: list[str], settings: MatchSettings
) -> ColumnElement[bool] | None:
    if _is_universal(values):
        return None
    if attr.vr in {"DA", "TM", "DT"}:
        return _range_match(attr, values[0])
    return _string_match(attr, values, settings)


def _ae_title_clause(
    values: list[str], bounds: tuple[str | None, str | None], settings: MatchSettings
) -> ColumnElement[bool] | None:
    """Scheduled Station AE Title is multi-valued: any stored value may match (C.2.2.2.1).

    ``bounds`` is the start_datetime range the date/time keys already impose; repeating it
    here makes "station + day" one range of the (ae_title, start_datetime) index.
    """
    if _is_universal(values):
        return None
    a = step_station_aes.c
    match = or_(*[_text_clause(a.ae_title, v, False, settings.dialect) for v in values])
    low, high = bounds
    window = [a.start_datetime >= low] if low is not None else []
    window += [a.start_datetime <= high] if high is not None else []
    return _s.id.in_(select(a.step_pk).where(match, *window))


def _code_clauses(ds: Dataset, keyword: str, settings: MatchSettings) -> list[ColumnElement[bool]]:
    items = list(getattr(ds, keyword, None) or [])
    if not items:
        return []
    out = []
    for name, col in zip(_CODE_ITEM, CODE_SEQUENCES[keyword], strict=True):
        values = _values(items[0].get(name))
        if not _is_universal(values):
            out.append(_string_match(_Attr(name, 0, "SH", col), values, settings))
    return out


def _level_clauses(
    ds: Dataset, table: Mapping[str, _Attr], settings: MatchSettings
) -> list[ColumnElement[bool]]:
    out = []
    for keyword, attr in table.items():
        if keyword in _SPECIAL or keyword not in ds:
            continue
        clause = _attr_clause(attr, _values(ds[keyword].value), settings)
        if clause is not None:
            out.append(clause)
    return out


def _step_clauses(item: Dataset, settings: MatchSettings) -> list[ColumnElement[bool]]:
    out = _level_clauses(item, STEP_LEVEL, settings)
    date = "".join(_values(item.get("ScheduledProcedureStepStartDate"))[:1])
    time = "".join(_values(item.get("ScheduledProcedureStepStartTime"))[:1])
    try:
        dt = _date_time_clause(date, time)
        bounds = _datetime_bounds(date, time)
    except InvalidQuery as exc:
        raise InvalidQuery(f"ScheduledProcedureStepStartDate/Time: {exc}") from exc
    ae = _ae_title_clause(_values(item.get("ScheduledStationAETitle")), bounds, settings)
    out += [c for c in (ae, dt) if c is not None]
    for keyword in _STEP_CODE_SEQUENCES:
        out += _code_clauses(item, keyword, settings)
    return out


def match_clauses(ds: Dataset, settings: MatchSettings) -> list[ColumnElement[bool]]:
    """Every SQL condition the identifier's matching keys impose (hidden statuses included)."""
    out = _level_clauses(ds, TOP_LEVEL, settings)
    out += _code_clauses(ds, "RequestedProcedureCodeSequence", settings)
    sps = list(getattr(ds, SPS_SEQUENCE, None) or [])
    if sps:
        out += _step_clauses(sps[0], settings)
    out.append(_s.status != "EXPIRED")
    if settings.hidden_statuses:
        out.append(_s.status.not_in(settings.hidden_statuses))
    return out


def _columns() -> list[ColumnElement[Any]]:
    cols: list[ColumnElement[Any]] = [a.column.label(k) for k, a in TOP_LEVEL.items()]
    cols += [a.column.label(k) for k, a in STEP_LEVEL.items()]
    for keyword, code_cols in CODE_SEQUENCES.items():
        cols += [c.label(f"{keyword}.{n}") for n, c in zip(_CODE_ITEM, code_cols, strict=True)]
    return cols


def build_select(ds: Dataset, settings: MatchSettings) -> Select[Any]:
    """The query answering identifier ``ds``: at most ``max_matches + 1`` rows, in start order."""
    joined = procedure_steps.join(orders, _s.order_pk == _o.id).join(
        patients, _o.patient_pk == _p.id
    )
    return (
        select(*_columns())
        .select_from(joined)
        .where(literal(True), *match_clauses(ds, settings))
        .order_by(_s.start_datetime, _s.id)
        .limit(settings.max_matches + 1)
    )


# --- requested keys and responses -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One requested return key; ``children`` lists a sequence's requested item keys."""

    tag: int
    keyword: str
    vr: str
    children: tuple[KeySpec, ...] | None = None


_SEQUENCE_DEFAULTS: dict[str, tuple[str, ...]] = {
    SPS_SEQUENCE: (*STEP_LEVEL, *_STEP_CODE_SEQUENCES),
    **{k: _CODE_ITEM for k in CODE_SEQUENCES},
}


def _spec_for_keyword(keyword: str) -> KeySpec:
    tag = int(tag_for_keyword(keyword) or 0)
    vr = dictionary_VR(tag)
    children = (
        tuple(_spec_for_keyword(k) for k in _SEQUENCE_DEFAULTS.get(keyword, ()))
        if vr == "SQ"
        else None
    )
    return KeySpec(tag, keyword, vr, children)


def _spec(elem: Any) -> KeySpec:
    keyword = keyword_for_tag(elem.tag) or ""
    if elem.VR != "SQ":
        return KeySpec(int(elem.tag), keyword, elem.VR)
    items = list(elem.value or [])
    if not items or len(items[0]) == 0:  # empty sequence key: return the whole item
        return (
            _spec_for_keyword(keyword)
            if keyword in _SEQUENCE_DEFAULTS
            else KeySpec(int(elem.tag), keyword, "SQ", ())
        )
    return KeySpec(int(elem.tag), keyword, "SQ", tuple(_spec(e) for e in items[0]))


def requested_keys(ds: Dataset) -> tuple[KeySpec, ...]:
    """The return keys of identifier ``ds`` (SpecificCharacterSet is not a key)."""
    return tuple(_spec(e) for e in ds if e.tag != 0x00080005 and e.tag.element != 0)


def unsupported_keys(keys: Sequence[KeySpec]) -> list[str]:
    """Requested keys the worklist cannot fill (answered empty; pending status 0xFF01)."""
    known = {*TOP_LEVEL, *STEP_LEVEL, *CODE_SEQUENCES, SPS_SEQUENCE, *_CODE_ITEM}
    out: list[str] = []
    for key in keys:
        if key.keyword not in known:
            out.append(key.keyword or f"{key.tag:08X}")
        out += unsupported_keys(key.children or ())
    return out


def _fill(ds: Dataset, keys: Sequence[KeySpec], row: Mapping[Any, Any], prefix: str) -> None:
    for key in keys:
        if key.vr == "SQ" and key.keyword in CODE_SEQUENCES and not row.get(f"{key.keyword}.CodeValue"):
            # No code: an empty sequence (a type 2 return key, PS3.4 K.6-1), never an item whose
            # type 1 CodeValue and CodingSchemeDesignator are empty (PS3.3 8.8).
            ds.add_new(key.tag, "SQ", [])
            continue
        if key.vr == "SQ":
            item = Dataset()
            _fill(item, key.children or (), row, f"{key.keyword}.")
            ds.add_new(key.tag, "SQ", [item])
            continue
        value = row.get(prefix + key.keyword)
        if value is None and prefix:
            value = row.get(key.keyword)
        ds.add_new(key.tag, key.vr, _dicom_value(value or "", key.vr))


def _dicom_value(value: str, vr: str) -> Any:
    if vr == "AE" and "\\" in value:
        return value.split("\\")
    return value


def build_response(row: Mapping[Any, Any], keys: Sequence[KeySpec], charset: str) -> Dataset:
    """The response identifier for one matching row: exactly ``keys``, plus SpecificCharacterSet."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    _fill(ds, keys, row, "")
    return ds


@cache
def _is_utf8(codec: str) -> bool:
    return codecs.lookup(codec).name == "utf-8"


def response_charset(row: Mapping[Any, Any] | Sequence[Any], site: str) -> str:
    """``site`` if it can encode every text value of ``row``, else ISO_IR 192 (PS3.3 C.12.1.1.2)."""
    codec = python_encoding.get(site, "utf-8")
    if _is_utf8(codec):  # encodes every value
        return site
    one_byte = single_byte(site)
    for value in row.values() if isinstance(row, Mapping) else row:
        if isinstance(value, str) and not value.isascii():
            try:
                encoded = value.encode(codec)
            except UnicodeEncodeError:
                return "ISO_IR 192"
            if one_byte and len(encoded) != len(value):  # pydicom's codec for ISO_IR 13 also writes kanji
                return "ISO_IR 192"
    return site
