"""SMART system scopes: parsing (v1 and v2), the grant as an intersection, and what a token allows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.auth.scopes import InvalidScope, Scope, allows, grant, parse, parse_many, render

TYPES = ["ImagingStudy", "Patient", "ServiceRequest", "DiagnosticReport", "Endpoint"]


@pytest.mark.parametrize(("text", "resource", "letters", "v1"), [
    ("system/ImagingStudy.rs", "ImagingStudy", "rs", False),
    ("system/ImagingStudy.r", "ImagingStudy", "r", False),
    ("system/ImagingStudy.s", "ImagingStudy", "s", False),
    ("system/*.rs", "*", "rs", False),
    ("system/Patient.cruds", "Patient", "cruds", False),
    ("system/Patient.cud", "Patient", "cud", False),
    ("system/ImagingStudy.read", "ImagingStudy", "rs", True),
    ("system/*.read", "*", "rs", True),
    ("system/Patient.write", "Patient", "cud", True),
    ("system/Patient.*", "Patient", "cruds", True),
])
def test_a_system_scope_parses_to_its_resource_and_letters(text: str, resource: str, letters: str, v1: bool) -> None:
    assert parse(text) == Scope(resource, frozenset(letters), v1)


@pytest.mark.parametrize("text", [
    "system/ImagingStudy.sr",  # v2 letters out of order
    "system/ImagingStudy.rr",
    "system/ImagingStudy.x",
    "system/ImagingStudy.",
    "system/ImagingStudy",
    "system/imagingStudy.rs",  # a resource type starts with a capital
    "system/ImagingStudy.rs?category=x",  # granular scopes are not supported
    "patient/ImagingStudy.rs",
    "user/*.read",
    "openid",
    "launch",
    "system/*.rs ",
    "system/*.rs\n",
    "",
    "system/Image Study.rs",
])
def test_anything_else_is_not_a_system_scope(text: str) -> None:
    with pytest.raises(InvalidScope):
        parse(text)


def test_parse_many_splits_good_from_bad() -> None:
    good, bad = parse_many(["system/ImagingStudy.rs", "openid", "system/Patient.read", "patient/*.rs"])

    assert [render(s) for s in good] == ["system/ImagingStudy.rs", "system/Patient.read"]
    assert bad == ["openid", "patient/*.rs"]


@pytest.mark.parametrize(("scopes", "resource_type", "interaction", "allowed"), [
    (["system/ImagingStudy.rs"], "ImagingStudy", "read", True),
    (["system/ImagingStudy.rs"], "ImagingStudy", "search", True),
    (["system/ImagingStudy.r"], "ImagingStudy", "search", False),
    (["system/ImagingStudy.s"], "ImagingStudy", "read", False),
    (["system/ImagingStudy.read"], "ImagingStudy", "search", True),
    (["system/ImagingStudy.rs"], "Patient", "read", False),
    (["system/*.rs"], "Patient", "read", True),
    (["system/*.read"], "DiagnosticReport", "search", True),
    (["system/*.cud"], "Patient", "read", False),
    (["system/Patient.write"], "Patient", "read", False),
    (["system/Patient.*"], "Patient", "search", True),
    (["patient/*.read", "openid"], "Patient", "read", False),
    ([], "ImagingStudy", "read", False),
])
def test_allows_checks_resource_type_and_letter(scopes: list[str], resource_type: str, interaction: str,
                                               allowed: bool) -> None:
    assert allows(scopes, resource_type, interaction) is allowed  # type: ignore[arg-type]


def _grant(registered: list[str], requested: list[str]) -> list[str]:
    return [render(s) for s in grant([parse(r) for r in registered], [parse(q) for q in requested])]


@pytest.mark.parametrize(("registered", "requested", "granted"), [
    (["system/ImagingStudy.rs"], ["system/ImagingStudy.rs"], ["system/ImagingStudy.rs"]),
    (["system/ImagingStudy.rs"], ["system/ImagingStudy.read"], ["system/ImagingStudy.read"]),
    (["system/ImagingStudy.r"], ["system/ImagingStudy.read"], ["system/ImagingStudy.r"]),
    (["system/*.read"], ["system/ImagingStudy.rs"], ["system/ImagingStudy.rs"]),
    (["system/ImagingStudy.rs"], ["system/*.rs"], ["system/ImagingStudy.rs"]),
    (["system/ImagingStudy.rs"], ["system/Patient.rs"], []),
    (["system/ImagingStudy.rs", "system/Patient.r"], ["system/*.read"], ["system/ImagingStudy.read",
                                                                        "system/Patient.r"]),
    (["system/*.rs"], ["system/Patient.r", "system/Patient.s"], ["system/Patient.rs"]),
    (["system/*.cruds"], ["system/Patient.cud"], ["system/Patient.cud"]),
])
def test_the_grant_is_what_both_registration_and_request_allow(registered: list[str], requested: list[str],
                                                               granted: list[str]) -> None:
    assert _grant(registered, requested) == granted


_resources = st.sampled_from(["*", *TYPES])
_letters = st.sets(st.sampled_from("cruds"), min_size=1).map(frozenset)
_scopes = st.builds(Scope, _resources, _letters, st.booleans())


@given(st.lists(_scopes, max_size=5), st.lists(_scopes, max_size=5))
def test_granted_scopes_allow_exactly_the_intersection(registered: list[Scope], requested: list[Scope]) -> None:
    granted = [render(s) for s in grant(registered, requested)]
    for resource_type in TYPES:
        for interaction in ("read", "search"):
            both = (allows([render(s) for s in registered], resource_type, interaction)
                    and allows([render(s) for s in requested], resource_type, interaction))
            assert allows(granted, resource_type, interaction) is both


@given(_scopes)
def test_a_rendered_scope_parses_back_to_the_same_permissions(scope: Scope) -> None:
    again = parse(render(scope))

    assert (again.resource, again.permissions) == (scope.resource, scope.permissions)


@given(st.text(max_size=40))
def test_parse_accepts_or_refuses_any_text_without_crashing(text: str) -> None:
    try:
        scope = parse(text)
    except InvalidScope:
        return
    assert text.startswith("system/") and scope.permissions
