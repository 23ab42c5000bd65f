"""Built-in transforms and the registry (engine.mapping.transforms, engine.mapping.hl7types)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

import engine.mapping  # noqa: F401  (registers the HL7 data-type transforms)
from engine.errors import HL7ApplicationError
from engine.hl7.er7 import Separators
from engine.mapping.transforms import TransformContext, get_transform, register_transform

CTX = TransformContext(Separators(), ZoneInfo("Europe/Stockholm"))
UTC = TransformContext(Separators(), ZoneInfo("UTC"))


def run(name: str, value: object, *args: object, ctx: TransformContext = CTX) -> object:
    found = get_transform(name)
    assert found is not None
    return found.fn(value, args, ctx)


def test_ts_with_offset_moves_to_site_time() -> None:
    assert run("ts_to_dt", "202403060830+0100", ctx=UTC) == "20240306073000"


def test_ts_without_offset_is_site_time() -> None:
    assert run("ts_to_dt", "202403060830") == "20240306083000"


def test_ts_date_only_stays_a_date() -> None:
    assert run("ts_to_dt", "20240306") == "20240306"


def test_ts_keeps_fraction_digits() -> None:
    assert run("ts_to_dt", "20240306083015.12") == "20240306083015.12"


def test_ts_in_a_tq_component_uses_the_time_part() -> None:
    assert run("ts_to_dt", "20240306083000&S") == "20240306083000"


def test_ts_to_da_takes_the_date_as_written() -> None:
    assert run("ts_to_da", "19720214000000+0500") == "19720214"


def test_ts_to_da_without_day_is_a_data_type_error() -> None:
    with pytest.raises(HL7ApplicationError) as info:
        run("ts_to_da", "1972")
    assert info.value.code == 102


def test_ts_to_da_keep_gives_a_date_without_day_back_as_written() -> None:
    assert (run("ts_to_da", "1972", "keep"), run("ts_to_da", "197205", "keep")) == ("1972", "197205")
    assert run("ts_to_da", "19720214000000", "keep") == "19720214"


def test_ts_to_tm_is_the_time_of_day() -> None:
    assert run("ts_to_tm", "20240306083015") == "083015"


@pytest.mark.parametrize("bad", ["20241345", "2024030625", "abc", "196203520", "Aug 15, 1942", "03/06/2024",
                                 "20240230", "202403060830.5"])
def test_bad_ts_is_102(bad: str) -> None:
    with pytest.raises(HL7ApplicationError) as info:
        run("ts_to_dt", bad)
    assert info.value.code == 102


# What validation tolerates (and notes) the transforms read the same way.


@pytest.mark.parametrize(
    ("value", "dt"),
    [
        ("2024-03-06", "20240306"),
        ("20240306083015123", "20240306083015.123"),
        ("20190916143134920350", "20190916143134.920350"),
        ("20240306083015.1234567", "20240306083015.123456"),
        ("2017-04-25 07:31:13.123456", "20170425073113.123456"),
        ("20240306T0830", "20240306083000"),
        ("202403060830+01", "20240306073000"),
        ("202403060830+01:00", "20240306073000"),
        ("20240306083000Z", "20240306083000"),
    ],
)
def test_ts_to_dt_reads_the_unambiguous_variants(value: str, dt: str) -> None:
    assert run("ts_to_dt", value, ctx=UTC) == dt


def test_ts_to_da_reads_an_iso_birth_date() -> None:
    assert run("ts_to_da", "1962-03-20") == "19620320"


def test_ts_to_da_reads_a_birth_date_with_trailing_spaces() -> None:
    assert run("ts_to_da", "19620320  ") == "19620320"


def test_ts_to_fhir_reads_a_fraction_without_its_point() -> None:
    assert run("ts_to_fhir", "20240706083000123") == "2024-07-06T08:30:00+02:00"


def test_ts_to_fhir_of_an_iso_date_is_the_date() -> None:
    assert run("ts_to_fhir", "2024-07-06") == "2024-07-06"


def test_ts_to_fhir_of_a_date_with_an_offset_is_the_date_without_it() -> None:
    assert run("ts_to_fhir", "20240706+0200") == "2024-07-06"


def test_ts_to_fhir_has_the_site_offset_in_summer() -> None:
    assert run("ts_to_fhir", "20240706083000") == "2024-07-06T08:30:00+02:00"


def test_ts_to_fhir_partial_dates() -> None:
    assert run("ts_to_fhir", "202407") == "2024-07"


def test_xpn_to_pn_swaps_prefix_and_suffix() -> None:
    assert run("xpn_to_pn", "Smith^John^Q^Jr^Dr") == "Smith^John^Q^Dr^Jr"


def test_xpn_to_pn_drops_trailing_empty_components() -> None:
    assert run("xpn_to_pn", "Smith^John^^^") == "Smith^John"


def test_xpn_family_subcomponents_keep_the_surname() -> None:
    assert run("xpn_to_pn", "Everyman&&&&Aniston^Adam") == "Everyman^Adam"


def test_xpn_repetitions_become_pn_component_groups_by_their_representation_code() -> None:
    reps = ["Yamada^Tarou^^^^^L^A", "山田^太郎^^^^^L^I", "やまだ^たろう^^^^^L^P"]
    assert run("xpn_groups_to_pn", reps) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert run("xpn_groups_to_pn", [reps[0], reps[2]]) == "Yamada^Tarou==やまだ^たろう"
    assert run("xpn_groups_to_pn", [reps[1]]) == "=山田^太郎"  # an ideographic name alone
    assert run("xpn_groups_to_pn", ["Wang^Xiaodong^^^^^L", "王^小東^^^^^L^I"]) == "Wang^Xiaodong=王^小東"


def test_xpn_repetitions_of_one_group_give_the_first() -> None:
    # HL7 sends the legal name first; a feed that sends its display name (D) first means that one
    assert run("xpn_groups_to_pn", ["Everyman^Adam^^^^^D", "Bing^Josh^^^^^L"]) == "Everyman^Adam"
    assert run("xpn_groups_to_pn", ["Smith^Mary", "Jones^Mary"]) == "Smith^Mary"  # no types: the first
    assert run("xpn_groups_to_pn", ["", "Jones^Mary"]) == "Jones^Mary"  # an empty first repetition
    assert run("xpn_groups_to_pn", ["Smith^Mary^^^^^L^X"]) == ""  # a representation DICOM has no group for
    assert run("xpn_groups_to_pn", []) == ""


def test_an_alias_listed_before_the_legal_name_is_not_the_name() -> None:
    # Real feeds list an alias (XPN-7 A) before the legal name; the worklist must show the legal one
    assert run("xpn_groups_to_pn", ["Alias^Al^^^^^A", "Legal^Lee^^^^^L"]) == "Legal^Lee"
    assert run("xpn_groups_to_pn", ["Alias^Al^^^^^A", "Other^Name"]) == "Other^Name"  # first non-alias
    assert run("xpn_groups_to_pn", ["Alias^Al^^^^^A"]) == "Alias^Al"  # only an alias: better than no name
    assert run("xpn_groups_to_pn", ["Kana^A^^^^^A^P", "Yamada^Tarou^^^^^L^A", "やまだ^たろう^^^^^L^P"]) \
        == "Yamada^Tarou==やまだ^たろう"  # per group


def test_the_name_types_left_for_last_are_the_sites() -> None:
    # {xpn_groups_to_pn: [A, D]}: a site whose display names are not legal names
    assert run("xpn_groups_to_pn", ["Shown^Adam^^^^^D", "Bing^Josh^^^^^L"], "A", "D") == "Bing^Josh"
    assert run("xpn_groups_to_pn", ["alias^a^^^^^a", "Bing^Josh^^^^^L"], "A", "D") == "Bing^Josh"  # any case


_XPN = st.lists(st.text(alphabet="abcXYZ &\\=é", max_size=6), min_size=1, max_size=7).map("^".join)


@given(_XPN)
def test_one_xpn_repetition_gives_what_xpn_to_pn_gives(xpn: str) -> None:
    assert run("xpn_groups_to_pn", [xpn]) == run("xpn_to_pn", xpn)


def test_pn_group_reads_one_component_group() -> None:
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert [run("pn_group", name, n) for n in (1, 2, 3, 4)] == ["Yamada^Tarou", "山田^太郎", "やまだ^たろう", ""]
    assert run("pn_group", "=山田^太郎", 1) == "山田^太郎"  # an HL7 name needs one: the first there is
    assert run("pn_group", "Doe^Jane", 1) == "Doe^Jane"


def test_xcn_to_pn_drops_the_id() -> None:
    assert run("xcn_to_pn", "1234^Berg^Anders^^^Dr") == "Berg^Anders^^Dr"


def test_ndl_reads_cnn_subcomponents() -> None:
    assert run("ndl_to_pn", "77&Nyberg&Karin") == "Nyberg^Karin"


def test_ndl_sent_as_an_xcn_drops_the_id_instead_of_reading_it_as_the_family_name() -> None:
    assert run("ndl_to_pn", "D1458838^Long^Lata^T.^^^M.D.") == "Long^Lata^T."
    assert run("ndl_to_pn", "77^Nyberg^Karin") == "Nyberg^Karin"


def test_ndl_sent_as_an_xpn_is_read_as_a_name() -> None:
    assert run("ndl_to_pn", "Nyberg^Karin") == "Nyberg^Karin"
    assert run("ndl_to_pn", "D1458838") == "D1458838"  # an id alone: nothing says it is not a name
    assert run("ndl_to_pn", "Nyberg 2^^Karin") == "Nyberg 2^^Karin"  # no name in component 2: XPN


def test_truncate_to_target_vr_applies_per_value() -> None:
    ctx = TransformContext(Separators(), ZoneInfo("UTC"), "AE")
    assert run("truncate", "A" * 20 + "\\B", ctx=ctx) == "A" * 16 + "\\B"


def test_truncate_to_pn_applies_per_component_group() -> None:
    ctx = TransformContext(Separators(), ZoneInfo("UTC"), "PN")
    name = "A" * 70 + "=" + "山" * 70 + "=" + "や"
    assert run("truncate", name, ctx=ctx) == "A" * 64 + "=" + "山" * 64 + "=" + "や"
    assert run("truncate", "Yamada^Tarou=山田^太郎", ctx=ctx) == "Yamada^Tarou=山田^太郎"


def test_truncate_to_given_length() -> None:
    assert run("truncate", "abcdef", 3) == "abc"


def test_replace_is_a_regex() -> None:
    assert run("replace", "00123", "^0+", "") == "123"


def test_split_and_join() -> None:
    assert run("split", "a,b", ",") == ["a", "b"]
    assert run("join", ["a", "", "b"]) == "a\\b"


def test_trim_upper_lower_component_prefix() -> None:
    assert run("trim", " x ") == "x"
    assert run("upper", "ct") == "CT"
    assert run("lower", "CT") == "ct"
    assert run("component", "a^b^c", 2) == "b"
    assert run("prefix", "42", "MRN") == "MRN42"


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_transform("trim", lambda v, a, c: v)


def test_uid_from_text_is_deterministic_and_valid() -> None:
    from pydicom.valuerep import validate_value

    first = run("uid_from_text", "ACC-1")
    assert first == run("uid_from_text", "ACC-1") != run("uid_from_text", "ACC-2")
    assert str(first).startswith("2.25.") and len(str(first)) <= 64
    validate_value("UI", first, validation_mode=2)
    assert run("uid_from_text", "") == ""


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_uid_from_text_is_uuid5_as_python_computes_it(name: str) -> None:
    import uuid

    from engine.mapping.hl7types import uuid5_int

    assert uuid5_int(name) == uuid.uuid5(uuid.NAMESPACE_OID, name).int
