"""Reading a FHIR search request (R4 3.1.1) into a plan: pure, no I/O.

Parameters are ``(name, value)`` pairs in request order, from the query string or a
form-encoded POST ``_search`` alike. A repeated parameter ANDs; commas inside a value
OR (``\\,`` is a literal comma). An unknown parameter, modifier or prefix, or a
malformed value, is a :class:`SearchError` (the API answers 400), unless ``lenient``
(``Prefer: handling=lenient``), where unknown parameters are dropped and reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Literal

from engine.errors import RadbridgeError
from engine.fhir.instant import DateRange, search_range
from engine.fhir.model import Param
from engine.fhir.registry import MODULES, by_type

__all__ = ["JSON_TYPES", "Condition", "DateValue", "Plan", "SearchError", "TokenValue", "json_format", "parse",
           "whole_number"]

DEFAULT_COUNT = 50
MAX_COUNT = 500
#: Values a search may give in all (each comma-separated value of each parameter): the SQL of one value is an
#: index condition, and past about a thousand SQLite refuses the statement ("Expression tree is too large").
MAX_VALUES = 500
#: Parameters a search may AND (a repeated parameter counts each time): PostgreSQL's planner takes time that grows
#: faster than their number (16: 0.1 s, 64: 2.4 s, 500: more than a minute, on 300 studies).
MAX_CONDITIONS = 16
#: Resources ``_revinclude`` may add to one page (a patient's ``_revinclude`` of every study it has
#: is otherwise unbounded); past it the search is refused rather than silently cut short.
MAX_INCLUDED = 1000
#: Characters of resource JSON a search page's matches may hold (past its first match, served whatever its size):
#: a page of 50 text reports of 5 MB each was one 250 MB response. A page cut short has a ``next`` link.
MAX_PAGE_CHARS = 8 * 1024 * 1024
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_ELEMENT = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
_STRING_MODIFIERS = ("", "exact", "contains")
#: Parameters every type has, beyond its own (R4 3.1.1.4, "Parameters for all resources").
_COMMON = {"_id": Param("_id", "token"), "_lastUpdated": Param("_lastUpdated", "date")}
#: What ``_format`` and ``Accept`` may name for JSON; ``application/json+fhir`` is the DSTU2 name older clients send.
JSON_TYPES = frozenset({"json", "application/json", "application/fhir+json", "application/json+fhir"})


class SearchError(RadbridgeError):
    """A search request the server cannot run as asked (``status``, 400 unless said, OperationOutcome ``code``)."""

    def __init__(self, message: str, code: str = "invalid", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def json_format(value: str) -> bool:
    """True if ``_format=value`` asks for JSON (``json``, ``application/fhir+json;fhir-version=4.0`` …)."""
    return value.split(";")[0].strip().lower() in JSON_TYPES


@dataclass(frozen=True, slots=True)
class TokenValue:
    """``[system|]code``: ``system`` None matches any system, "" only identifiers without one."""

    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class DateValue:
    """A prefixed date value: the comparison and the UTC range of the value."""

    prefix: str
    range: DateRange


Value = TokenValue | DateValue | str


@dataclass(frozen=True, slots=True)
class Condition:
    """One parameter occurrence: ``param`` matches if any of ``values`` does."""

    param: Param
    modifier: str
    values: tuple[Value, ...]


@dataclass
class Plan:
    """Everything a search needs, validated."""

    res_type: str
    conditions: list[Condition] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    cursor: int = 0
    includes: list[tuple[str, str, str]] = field(default_factory=list)  # (source type, param, target type)
    revincludes: list[tuple[str, str]] = field(default_factory=list)  # (source type, param)
    summary_count: bool = False
    elements: tuple[str, ...] = ()
    ignored: list[str] = field(default_factory=list)
    accepted: list[tuple[str, str]] = field(default_factory=list)  # echoed in the self/next links


def whole_number(text: str) -> bool:
    """True if ``text`` is ASCII digits only: ``str.isdigit`` also takes ``²`` or ``①``, which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def _split(value: str) -> list[str]:
    parts = re.split(r"(?<!\\),", value)
    return [p.replace("\\,", ",") for p in parts]


def _token(text: str) -> TokenValue:
    if "|" not in text:
        return TokenValue(None, text)
    system, code = text.split("|", 1)
    return TokenValue(system, code or None)


def _date(text: str, zone: tzinfo) -> DateValue:
    prefix = text[:2] if text[:2] in _PREFIXES else "eq"
    body = text[2:] if text[:2] in _PREFIXES else text
    if text[:2].isalpha() and text[:2] not in _PREFIXES:
        raise SearchError(f"date prefix {text[:2]!r} is not supported (use {', '.join(_PREFIXES)})", "not-supported")
    try:
        return DateValue(prefix, search_range(body, zone))
    except ValueError as exc:
        raise SearchError(f"{text!r} is not a FHIR date or dateTime") from exc


_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _base_key(url: str) -> str:
    """A base URL compared as such: scheme and host case-folded, without a trailing slash."""
    scheme, _, rest = url.rstrip("/").partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}"


def _local(text: str, bases: tuple[str, ...]) -> str | None:
    """An absolute reference as ``Type/id`` relative to this server, or None when it names another server
    (its base is none of ``bases``; R4 3.1.1.4.8: an absolute reference is a resource on that server)."""
    for base in bases:
        key = _base_key(base) + "/"
        rest = text.rstrip("/")[len(key):]
        if _base_key(text).startswith(key) and rest.count("/") == 1:  # base/Type/id, not base/more/Type/id
            return rest
    return None


def _unversioned(text: str, param: Param) -> str:
    """A reference value without its version (``Patient/1/_history/2``, relative or absolute, is ``Patient/1``).

    radbridge's references are never version specific: each names the resource, whose versions are all versions
    of it, so a versioned value matches the resources that refer to that resource, whatever the version (a version
    it never had included: this server does not look versions up to match a reference). A ``_history`` part that
    names no version is not a reference (400).
    """
    head, marker, version = text.rstrip("/").rpartition("/_history/")
    if not marker:
        return text
    if not whole_number(version) or len(version) > 9 or not head:
        raise SearchError(f"{param.name}: {text!r} is not a reference (Type/id, or Type/id/_history/version)")
    return head


def _reference(text: str, param: Param, type_modifier: str, bases: tuple[str, ...] = ()) -> str | None:
    """``Type/id`` for a reference value (a version in it ignored, :func:`_unversioned`); None for an absolute URL
    of another server (it matches nothing here)."""
    text = _unversioned(text, param)
    if _ABSOLUTE.match(text):
        local = _local(text, bases)
        if local is None:
            _reference("/".join(text.rstrip("/").split("/")[-2:]), param, type_modifier)  # 400 if not Type/id
            return None
        text = local
    parts = text.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2][:1].isupper():
        target, res_id = parts[-2], parts[-1]
    elif len(parts) == 1:
        if type_modifier:
            target = type_modifier
        elif len(param.targets) == 1:
            target = param.targets[0]
        else:
            raise SearchError(f"{param.name}: give the type (Type/id) for {text!r}")
        res_id = text
    else:
        raise SearchError(f"{param.name}: {text!r} is not a reference (Type/id)")
    if target not in param.targets or (type_modifier and target != type_modifier):
        raise SearchError(f"{param.name} refers to {', '.join(param.targets)}, not {target}")
    if not _ID.match(res_id):
        raise SearchError(f"{param.name}: {res_id!r} is not a resource id")
    return f"{target}/{res_id}"


def _values(param: Param, modifier: str, raw: str, zone: tzinfo, bases: tuple[str, ...]) -> tuple[Value, ...]:
    if param.type == "token":
        if modifier:
            raise SearchError(f"modifier :{modifier} is not supported on {param.name}", "not-supported")
        return tuple(_token(v) for v in _split(raw))
    if param.type == "date":
        if modifier:
            raise SearchError(f"modifier :{modifier} is not supported on {param.name}", "not-supported")
        return tuple(_date(v, zone) for v in _split(raw))
    if param.type == "reference":
        if modifier and modifier not in param.targets:
            raise SearchError(f"modifier :{modifier} is not supported on {param.name}", "not-supported")
        found = (_reference(v, param, modifier, bases) for v in _split(raw))
        return tuple(v for v in found if v is not None)
    if modifier not in _STRING_MODIFIERS:
        raise SearchError(f"modifier :{modifier} is not supported on {param.name}", "not-supported")
    return tuple(_split(raw))


def _count(raw: str) -> int:
    if not whole_number(raw):
        raise SearchError(f"_count must be a whole number, not {raw!r}")
    return min(int(raw[:9]), MAX_COUNT)  # clamped, not an error (R4 3.1.1.5.7)


def _include(plan: Plan, raw: str, reverse: bool) -> None:
    source, _, name = raw.partition(":")
    name, _, target = name.partition(":")
    module = by_type(source)
    if module is None or f"{source}:{name}" not in module.INCLUDES:
        supported = [i for m in MODULES for i in m.INCLUDES]
        raise SearchError(f"{'_revinclude' if reverse else '_include'}={raw} is not supported "
                          f"(supported: {', '.join(supported)})", "not-supported")
    param = next(p for p in module.PARAMS if p.name == name)
    if reverse:
        if plan.res_type not in param.targets:
            raise SearchError(f"_revinclude={raw} does not point at {plan.res_type}")
        if (source, name) not in plan.revincludes:  # each one is a query: a repeat would only run it again
            plan.revincludes.append((source, name))
        return
    if source != plan.res_type:
        raise SearchError(f"_include={raw} does not start from {plan.res_type}")
    targets = (target,) if target else param.targets
    if target and target not in param.targets:
        raise SearchError(f"_include={raw}: {name} does not refer to {target}")
    plan.includes += [(source, name, t) for t in targets if (source, name, t) not in plan.includes]


def _control(plan: Plan, name: str, value: str) -> bool:
    """Apply a result parameter (``_count`` …); False if ``name`` is not one."""
    if name == "_count":
        if value == "":
            return True  # R4 3.1.1.5: a parameter without a value is ignored (the default count)
        plan.count = _count(value)
    elif name == "_cursor":
        if not whole_number(value) or len(value) > 18:
            raise SearchError("_cursor is not a page position of this server")
        plan.cursor = int(value)
        return True
    elif name in ("_include", "_revinclude"):
        _include(plan, value, name == "_revinclude")
    elif name == "_summary":
        if value not in ("count", "false"):
            raise SearchError(f"_summary={value} is not supported (count, false)", "not-supported")
        plan.summary_count = value == "count"
    elif name == "_elements":
        elements = tuple(e.strip() for e in value.split(",") if e.strip())
        if not elements or not all(_ELEMENT.match(e) for e in elements):
            raise SearchError(f"_elements={value!r}: give element names separated by commas")
        plan.elements = elements
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise SearchError(f"_total={value} is not one of none, estimate, accurate")
        # every searchset carries the exact total (it costs one index count), whatever was asked
    elif name == "_pretty":
        return True  # whitespace only: the stored JSON is served as is
    elif name == "_format":
        if not json_format(value):
            raise SearchError(f"_format={value} is not supported: this server answers only FHIR JSON",
                              "not-supported", 406)
    else:
        return False
    plan.accepted.append((name, value))
    return True


def _param(res_type: str, name: str) -> Param | None:
    if name in _COMMON:
        return _COMMON[name]
    module = by_type(res_type)
    assert module is not None
    return next((p for p in module.PARAMS if p.name == name), None)


def parse(res_type: str, pairs: list[tuple[str, str]], zone: tzinfo, lenient: bool = False,
          bases: tuple[str, ...] = ()) -> Plan:
    """The plan of a search on ``res_type`` (a served type); SearchError on a request it cannot run.

    ``bases`` are this server's own base URLs: an absolute reference value matches only under one of them
    (a reference to another server's resource matches nothing here; a condition left without values is false).
    """
    plan = Plan(res_type)
    for name, value in pairs:
        if _control(plan, name, value):
            continue
        base, _, modifier = name.partition(":")
        param = _param(res_type, base)
        if param is None:
            if lenient:
                plan.ignored.append(name)
                continue
            raise SearchError(f"unknown search parameter {name!r} for {res_type}", "not-supported")
        if value == "":
            continue  # R4 3.1.1.5: a parameter without a value is ignored
        plan.conditions.append(Condition(param, modifier, _values(param, modifier, value, zone, bases)))
        plan.accepted.append((name, value))
        if len(plan.conditions) > MAX_CONDITIONS:
            raise SearchError(f"a search may combine at most {MAX_CONDITIONS} parameters (a repeated one counts "
                              "each time); split it into several searches", "too-costly")
        if sum(len(c.values) for c in plan.conditions) > MAX_VALUES:
            raise SearchError(f"a search may give at most {MAX_VALUES} values in all (each comma-separated value "
                              "of each parameter); split it into several searches", "too-costly")
    return plan


Mode = Literal["match", "include"]
