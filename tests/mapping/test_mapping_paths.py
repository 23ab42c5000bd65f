"""HL7 path parsing and reading (engine.mapping.paths)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.hl7.er7 import Message, Segment, Separators
from engine.mapping.paths import PathSyntaxError, parse_hl7_path

SEPS = Separators()


def seg(text: str) -> list[Segment]:
    return [Segment(text, SEPS)]


def test_field_component_subcomponent_are_parsed() -> None:
    p = parse_hl7_path("PID-3.4.1")
    assert (p.segment, p.field, p.component, p.subcomponent) == ("PID", 3, 4, 1)


def test_occurrence_and_repetition_are_parsed() -> None:
    p = parse_hl7_path("OBR(2)-4(3).2")
    assert (p.occurrence, p.repetition, p.component) == (2, 3, 2)


def test_star_repetition_is_multi() -> None:
    assert parse_hl7_path("PID-3(*)").multi


def test_open_range_repetition_starts_at_given_one() -> None:
    p = parse_hl7_path("PID-3(2-)")
    assert p.read(seg("PID|||A~B~C")) == ["B", "C"]


def test_selector_keeps_matching_repetitions() -> None:
    p = parse_hl7_path("PID-3(4.1=HOSP).1")
    assert p.read(seg("PID|||X^^^OTHER~Y^^^HOSP")) == ["Y"]


def test_negated_selector_keeps_the_others() -> None:
    p = parse_hl7_path("PID-3(4.1!=HOSP).1")
    assert p.read(seg("PID|||X^^^OTHER~Y^^^HOSP~Z")) == ["X", "Z"]


def test_relative_item_path() -> None:
    p = parse_hl7_path("item.4.1")
    assert p.relative and (p.component, p.subcomponent) == (4, 1)


@pytest.mark.parametrize(
    "bad", ["pid-3", "PID-0", "PID-3.0", "PID-3(x)", "PI-3", "PID3", "PID-3.1.1.1"]
)
def test_bad_paths_are_rejected_with_reason(bad: str) -> None:
    with pytest.raises(PathSyntaxError, match=r"path|1-based|repetition"):
        parse_hl7_path(bad)


def test_leaf_values_are_unescaped() -> None:
    assert parse_hl7_path("OBR-4.2").read(seg(r"OBR||||C^A \T\ B")) == ["A & B"]


def test_composite_values_stay_as_written() -> None:
    assert parse_hl7_path("PID-5").read(seg("PID|||||Smith^John")) == ["Smith^John"]


def test_hl7_null_reads_as_empty() -> None:
    assert parse_hl7_path("PID-8").read(seg('PID||||||||""')) == [""]


def test_missing_parts_read_as_nothing_or_empty() -> None:
    assert parse_hl7_path("PID-30.2").read(seg("PID|1")) == []
    assert parse_hl7_path("PID-1.5").read(seg("PID|1")) == [""]


def test_msh_numbering_counts_the_field_separator() -> None:
    msg = Message("MSH|^~\\&|APP|FAC|||20240101||ORM^O01|1|P|2.3.1\r")
    assert parse_hl7_path("MSH-9.2").read(msg.all("MSH")) == ["O01"]
    assert parse_hl7_path("MSH-3").read(msg.all("MSH")) == ["APP"]


_TEXT = st.text(alphabet="ABCxyz019 .-", max_size=6)


@settings(deadline=None)
@given(
    st.lists(
        st.lists(st.lists(_TEXT, min_size=1, max_size=3), min_size=1, max_size=4),
        min_size=1,
        max_size=3,
    )
)
def test_every_written_subcomponent_is_read_back(reps: list[list[list[str]]]) -> None:
    field = "~".join("^".join("&".join(subs) for subs in comps) for comps in reps)
    segments = seg(f"ZZZ|{field}")
    for r, comps in enumerate(reps, 1):
        for c, subs in enumerate(comps, 1):
            for s, value in enumerate(subs, 1):
                path = parse_hl7_path(f"ZZZ-1({r}).{c}.{s}")
                assert (path.read(segments) or [""]) == [value]


@settings(deadline=None)
@given(
    st.sampled_from(["PID", "OBR", "ZDS", "IPC"]),
    st.one_of(st.none(), st.integers(1, 9)),
    st.integers(1, 60),
    st.one_of(st.none(), st.integers(1, 9)),
    st.one_of(st.none(), st.integers(1, 20)),
)
def test_parse_round_trips_the_numbers(
    name: str, occ: int | None, field: int, rep: int | None, comp: int | None
) -> None:
    text = name + (f"({occ})" if occ else "") + f"-{field}" + (f"({rep})" if rep else "")
    text += f".{comp}" if comp else ""
    p = parse_hl7_path(text)
    assert (p.segment, p.occurrence, p.field, p.repetition, p.component) == (
        name,
        occ,
        field,
        rep,
        comp,
    )


@settings(deadline=None)
@given(st.text(max_size=12))
def test_parser_never_fails_with_anything_but_path_syntax_error(text: str) -> None:
    with contextlib.suppress(PathSyntaxError):
        parse_hl7_path(text)


def test_hl7_values_are_laid_out_by_repetition_component_and_sub_component() -> None:
    """Gaps stay empty, the highest index given sets the count, delimiters in values are escaped."""
    from engine.hl7.er7 import Separators
    from engine.mapping.paths import target_path
    from engine.mapping.targets import render_hl7

    values = [("ZZZ-2", "plain"), ("ZZZ-3.2", "b"), ("ZZZ-3.4.1", "d1"), ("ZZZ-3.4.3", "d3"),
              ("ZZZ-5(2).1", "r2"), ("ZZZ-5(3)", "r3"), ("ZZZ-6.1", "a|b^c"), ("MSH-3", "APP")]
    text = render_hl7([(target_path(p), v) for p, v in values], ["MSH", "ZZZ"], Separators())
    assert text == "MSH|^~\\&|APP\rZZZ||plain|^b^^d1&&d3||~r2~r3|a\\F\\b\\S\\c\r"
