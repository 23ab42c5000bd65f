"""Named transforms: the one door for built-in and site functions.

A transform takes one value (or, when registered with ``on_list=True``, the
whole list of values), its arguments from the mapping file, and a
:class:`TransformContext`; it returns the new value. It raises
:class:`~engine.errors.HL7ApplicationError` with code 102 when the data cannot
be converted; the evaluator adds the ERR location of the source path.
Built-ins register below through :func:`register_transform`, exactly like a
site's ``register_transform("my_rule", fn)``. A transform never sees the
explicit null ``""`` of a whole value (engine.mapping.null): it passes through.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from engine.hl7.er7 import Separators
from engine.mapping.null import HL7_NULL

__all__ = [
    "STANDARD_SEPARATORS",
    "VR_MAX_LENGTH",
    "Transform",
    "TransformContext",
    "TransformFn",
    "get_transform",
    "register_transform",
    "transform_names",
]

Value = str | list[str]


@dataclass(frozen=True, slots=True)
class TransformContext:
    """What a transform may know besides its value."""

    seps: Separators
    timezone: ZoneInfo
    target_vr: str | None = None  # DICOM VR of the target attribute, when known


#: The standard separators, shared so that most messages hit the identity check in evaluation.
STANDARD_SEPARATORS = Separators()

TransformFn = Callable[[Any, tuple[Any, ...], TransformContext], Value]


@dataclass(frozen=True, slots=True)
class Transform:
    """A registered transform and the number of arguments it accepts."""

    name: str
    fn: TransformFn
    min_args: int = 0
    max_args: int = 0
    on_list: bool = False
    doc: str = ""


_REGISTRY: dict[str, Transform] = {}


def register_transform(
    name: str, fn: TransformFn, *, min_args: int = 0, max_args: int = 0, on_list: bool = False
) -> None:
    """Register ``fn`` under ``name``; a second registration of a name is a programming error."""
    if name in _REGISTRY:
        raise ValueError(f"transform {name!r} is already registered")
    doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    _REGISTRY[name] = Transform(name, fn, min_args, max(min_args, max_args), on_list, doc)


def get_transform(name: str) -> Transform | None:
    """The transform registered under ``name``, or None."""
    return _REGISTRY.get(name)


def transform_names() -> list[str]:
    """Every registered name, sorted (for suggestions and docs)."""
    return sorted(_REGISTRY)


#: PS3.5 Table 6.2-1 maximum value lengths (bytes; PN per component group).
VR_MAX_LENGTH: dict[str, int] = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64,
    "LT": 10240, "PN": 64, "SH": 16, "ST": 1024, "TM": 14, "UI": 64, "UC": 2**32 - 2,
}  # fmt: skip


def _trim(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """Remove leading and trailing spaces."""
    return value.strip()


def _upper(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """Upper-case the value."""
    return value.upper()


def _lower(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """Lower-case the value."""
    return value.lower()


def _truncate(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """Cut to N characters; without N, to the maximum length of the target VR (PS3.5 6.2)."""
    if args:
        return value[: int(args[0])]
    limit = VR_MAX_LENGTH.get(ctx.target_vr or "")
    if limit is None:
        return value
    if ctx.target_vr == "PN":  # 64 characters per component group (PS3.5 6.2), not per name
        return "\\".join("=".join(g[:limit] for g in v.split("=")) for v in value.split("\\"))
    return "\\".join(v[:limit] for v in value.split("\\"))


def _replace(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """Regular-expression replace: [pattern, replacement]."""
    return re.sub(str(args[0]), str(args[1]), value)


def _split(value: str, args: tuple[Any, ...], ctx: TransformContext) -> list[str]:
    """Split into several values on a separator (default the HL7 repetition separator)."""
    sep = str(args[0]) if args else ctx.seps.repetition
    return [part for part in value.split(sep) if part]


def _join(value: list[str], args: tuple[Any, ...], ctx: TransformContext) -> str:
    """Join several values with a separator (default the DICOM multi-value delimiter ``\\``)."""
    sep = str(args[0]) if args else "\\"
    return sep.join(v for v in value if v)


def _lines(value: list[str], args: tuple[Any, ...], ctx: TransformContext) -> str:
    """Repetitions of a text field as lines of one text, empty lines kept (a paragraph break)."""
    return "\n".join(value).rstrip("\n") if isinstance(value, list) else value


def _component(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """Component N of a composite value (HL7 v2.5.1 2.5.3)."""
    parts = value.split(ctx.seps.component)
    n = int(args[0])
    part = parts[n - 1] if 0 < n <= len(parts) else ""
    return "" if part == HL7_NULL else part


def _prefix(value: str, args: tuple[Any, ...], ctx: TransformContext) -> str:
    """Prepend a constant to a non-empty value."""
    return f"{args[0]}{value}" if value else value


register_transform("trim", _trim)
register_transform("upper", _upper)
register_transform("lower", _lower)
register_transform("truncate", _truncate, max_args=1)
register_transform("replace", _replace, min_args=2)
register_transform("split", _split, max_args=1)
register_transform("join", _join, max_args=1, on_list=True)
register_transform("lines", _lines, on_list=True)
register_transform("component", _component, min_args=1)
register_transform("prefix", _prefix, min_args=1)
