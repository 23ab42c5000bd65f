"""SMART system scopes: parse, intersect, and decide what a token allows (pure).

SMART App Launch 2.x, "Scopes for requesting clinical data": a system scope is
``system/<ResourceType|*>.<permissions>`` where the permissions are

* SMART v2: a non-empty subset of ``c r u d s`` written in that order
  (``system/ImagingStudy.rs``: read and search), or
* SMART v1: ``read`` (= ``rs``), ``write`` (= ``cud``) or ``*`` (= ``cruds``).

radbridge serves only read and search (``r``/``s``); ``c``/``u``/``d`` are parsed and
carried through the grant so a registration may already name them, and allow nothing
yet. Scopes with a query (v2 granular scopes, ``?category=…``) and the ``patient/`` and
``user/`` contexts are not for backend services and are refused (:class:`InvalidScope`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from engine.auth.interface import Interaction
from engine.errors import RadbridgeError

__all__ = ["InvalidScope", "Scope", "allows", "grant", "parse", "parse_many", "render"]

#: SMART v2 permission letters, in the order the specification requires them.
V2_ORDER = "cruds"
#: SMART v1 permission names and the v2 letters each stands for.
V1_PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset("rs"),
    "write": frozenset("cud"),
    "*": frozenset(V2_ORDER),
}
#: The permission letter each interaction of the contract needs.
LETTER: dict[Interaction, str] = {"read": "r", "search": "s"}

_SCOPE = re.compile(r"^system/(?P<resource>\*|[A-Z][A-Za-z]{0,63})\.(?P<permissions>[^./?\s]+)$")
_V2 = re.compile(r"^c?r?u?d?s?$")


class InvalidScope(RadbridgeError):
    """A scope string that is not a SMART system scope radbridge understands."""


@dataclass(frozen=True, slots=True)
class Scope:
    """One system scope: a resource type (or ``*``) and the v2 letters it grants.

    ``v1`` remembers the syntax it was written in, so a grant answers in the
    client's own dialect where the permissions allow it.
    """

    resource: str
    permissions: frozenset[str]
    v1: bool = False

    def covers(self, resource_type: str, letter: str) -> bool:
        """True if this scope grants ``letter`` on ``resource_type``."""
        return self.resource in ("*", resource_type) and letter in self.permissions


@lru_cache(maxsize=4096)
def parse(text: str) -> Scope:
    """The scope ``text`` names; InvalidScope if it is not a SMART system scope."""
    match = _SCOPE.fullmatch(text)
    if match is None:
        raise InvalidScope(f"not a SMART system scope (system/<type or *>.<permissions>): {text[:80]!r}")
    resource, permissions = match["resource"], match["permissions"]
    if permissions in V1_PERMISSIONS:
        return Scope(resource, V1_PERMISSIONS[permissions], v1=True)
    if not _V2.fullmatch(permissions):
        raise InvalidScope(f"permissions must be read, write, * or letters of c r u d s in that order: {text[:80]!r}")
    return Scope(resource, frozenset(permissions))


def parse_many(texts: Iterable[str]) -> tuple[list[Scope], list[str]]:
    """The scopes among ``texts`` that parse, and the texts that do not (in order)."""
    good: list[Scope] = []
    bad: list[str] = []
    for text in texts:
        try:
            good.append(parse(text))
        except InvalidScope:
            bad.append(text)
    return good, bad


def render(scope: Scope) -> str:
    """The scope as a string: v1 syntax where it was asked for and fits exactly, else v2 letters."""
    if scope.v1:
        for name, letters in V1_PERMISSIONS.items():
            if letters == scope.permissions:
                return f"system/{scope.resource}.{name}"
    return f"system/{scope.resource}." + "".join(c for c in V2_ORDER if c in scope.permissions)


def _meet(registered: Scope, requested: Scope) -> Scope | None:
    """What both scopes allow, in the requested syntax; None if nothing."""
    if registered.resource == "*":
        resource = requested.resource
    elif requested.resource in ("*", registered.resource):
        resource = registered.resource
    else:
        return None
    permissions = registered.permissions & requested.permissions
    return Scope(resource, permissions, requested.v1) if permissions else None


def grant(registered: Iterable[Scope], requested: Iterable[Scope]) -> tuple[Scope, ...]:
    """The requested scopes cut down to what the registration allows (RFC 6749 3.3).

    The result allows an interaction on a resource type exactly when both the
    registration and the request do; scopes on the same resource type merge.
    Sorted by resource, so the answer is stable.
    """
    merged: dict[str, Scope] = {}
    regs = list(registered)
    for want in requested:
        for have in regs:
            met = _meet(have, want)
            if met is None:
                continue
            old = merged.get(met.resource)
            merged[met.resource] = met if old is None else Scope(
                met.resource, old.permissions | met.permissions, old.v1 and met.v1)
    return tuple(merged[k] for k in sorted(merged))


def allows(scopes: Iterable[str], resource_type: str, interaction: Interaction) -> bool:
    """True if any of ``scopes`` (strings; unparseable ones allow nothing) grants the interaction."""
    letter = LETTER[interaction]
    good, _ = parse_many(scopes)
    return any(s.covers(resource_type, letter) for s in good)
