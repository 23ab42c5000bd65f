"""Rewriting a stored resource's references for a remote server (pure).

Our references are literal and local (``Patient/42``): meaningless on the EHR's server.
A push first lists them (:func:`local_references`), resolves each one (the destination
upserts the target and takes the server's id, or makes a logical reference from the
target's identifier) and then rewrites the resource with :func:`rewrite`. A reference
mapped to None is dropped (the target has no identifier to be found by, e.g. our
DICOMweb Endpoint; every element we drop this way is optional in R4).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["local_references", "logical", "remote_body", "rewrite"]

_LITERAL = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


def _is_reference(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("reference"), str) and bool(
        _LITERAL.match(value["reference"]))


def local_references(value: Any) -> list[str]:
    """Every literal ``Type/id`` reference in ``value``, in document order, each once."""
    found: dict[str, None] = {}
    if _is_reference(value):
        found[value["reference"]] = None
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, list):
        items = value
    else:
        items = []
    for item in items:
        found.update(dict.fromkeys(local_references(item)))
    return list(found)


def _replace(ref: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    extra = {k: v for k, v in ref.items() if k not in ("reference", "type", "identifier")}
    return {**target, **extra}


def rewrite(value: Any, mapping: Mapping[str, dict[str, Any] | None]) -> Any:
    """``value`` with each mapped reference replaced (its ``display`` kept) or dropped (None)."""
    if isinstance(value, list):
        kept = [item for item in value if not (_is_reference(item) and mapping.get(item["reference"], {}) is None)]
        return [rewrite(item, mapping) for item in kept]
    if not isinstance(value, dict):
        return value
    if _is_reference(value) and value["reference"] in mapping:
        target = mapping[value["reference"]]
        return value if target is None else _replace(value, target)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if _is_reference(item) and mapping.get(item["reference"], {}) is None:
            continue
        rewritten = rewrite(item, mapping)
        if rewritten != []:  # a list whose every reference was dropped goes too (R4: no empty arrays)
            out[key] = rewritten
    return out


def logical(res_type: str, key: tuple[str, str]) -> dict[str, Any]:
    """A logical reference (R4 Reference.identifier) to the ``res_type`` with identifier ``key``."""
    return {"type": res_type, "identifier": {"system": key[0], "value": key[1]}}


def remote_body(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without our ``id`` and ``meta`` (the server assigns its own)."""
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}
