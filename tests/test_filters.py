import pytest

from engine.config.models import FieldCondition, FilterConfig
from engine.filters import accepts, field_value, parse_path
from engine.hl7.er7 import Message

MSG = Message(
    "MSH|^~\\&|RIS|HOSP|RB|R|2026||ORM^O01|1|P|2.5\r"
    "PID|1||A1^^^H1~B2^^^H2||O\\S\\BRIEN^PAT\r"
    f"OBR|1{'|' * 23}CT\rOBR|2{'|' * 23}LAB\r"
)


def cond(**kw):
    return FieldCondition.model_validate(kw)


def test_paths_address_occurrence_repetition_component():
    assert field_value(MSG, "PID-3(2).4") == "H2"
    assert field_value(MSG, "OBR(2)-24") == "LAB"
    assert field_value(MSG, "PID-5.1") == "O^BRIEN"
    assert field_value(MSG, "ZZZ-1") == ""


@pytest.mark.parametrize("bad", ["PID3", "pid-3", "PID-x", "PID-3.1.2.3"])
def test_bad_paths_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_path(bad)


def test_type_and_sender_lists():
    assert accepts(MSG, FilterConfig(message_types=["ORM^*"]))
    assert not accepts(MSG, FilterConfig(message_types=["ADT^*"]))
    assert not accepts(MSG, FilterConfig(sending_applications=["HIS"]))


def test_conditions_combine_with_all_or_any():
    imaging = cond(field="OBR-24", **{"in": ["CT", "MR"]})
    lab = cond(field="OBR-24", equals="LAB")
    assert accepts(MSG, FilterConfig(conditions=[imaging]))
    assert not accepts(MSG, FilterConfig(conditions=[imaging, lab]))
    assert not accepts(MSG, FilterConfig(conditions=[imaging, lab], mode="all"))
    assert accepts(MSG, FilterConfig(conditions=[cond(field="OBR-24", equals="XR"), imaging], mode="any"))


def test_matches_present_and_negate():
    assert accepts(MSG, FilterConfig(conditions=[cond(field="PID-3.1", matches="^A\\d$")]))
    assert accepts(MSG, FilterConfig(conditions=[cond(field="PID-7", present=False)]))
    assert not accepts(MSG, FilterConfig(conditions=[cond(field="PID-3.4", equals="H1", negate=True)]))


def test_a_condition_needs_exactly_one_test():
    with pytest.raises(ValueError):
        cond(field="PID-3", equals="x", matches="y")
