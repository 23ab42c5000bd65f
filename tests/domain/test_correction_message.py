"""The ADT a PACS gets instead of corrected images: which event, which segments, which control id."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.domain.correction_message import CorrectedPatient, build_correction_adt, control_id, event_of

NOW = datetime(2026, 12, 6, 0, 30, tzinfo=UTC)
RENAMED = CorrectedPatient("NEW9", "HOSP", "DOE^JOHN", "19700101", "M", "583295", "HOSP")
UPDATED = CorrectedPatient("583295", "HOSP", "DOE^JONATHAN", "19700101", "M", "583295", "HOSP")


@pytest.mark.parametrize(("patient", "trigger", "expected"), [
    (RENAMED, "A47", ("A47", "ADT_A30")),
    (RENAMED, "A40", ("A40", "ADT_A39")),
    (RENAMED, "", ("A40", "ADT_A39")),  # an order moved the study to another patient
    (RENAMED, "A08", ("A40", "ADT_A39")),
    (UPDATED, "A47", ("A08", "ADT_A01")),  # the images never had the retired identifier
    (UPDATED, "A08", ("A08", "ADT_A01")),
])
def test_the_event_follows_what_changed_and_what_radbridge_was_told(
        patient: CorrectedPatient, trigger: str, expected: tuple[str, str]) -> None:
    assert event_of(patient, trigger) == expected


def test_an_identifier_change_is_an_a47_with_the_new_id_in_pid3_and_the_old_in_mrg1() -> None:
    segments = build_correction_adt(RENAMED, "RADBRIDGE", NOW, "A47", "k1").decode().split("\r")
    assert segments[0].split("|")[8] == "ADT^A47^ADT_A30"
    assert segments[1] == "EVN|A47|20261206003000"
    assert segments[2] == "PID|1||NEW9^^^HOSP||DOE^JOHN||19700101|M"
    assert segments[3] == "MRG|583295^^^HOSP"
    assert segments[4:] == [""]  # ADT_A30 has no PV1


def test_the_control_id_is_stable_per_event_and_differs_between_events() -> None:
    assert control_id(UPDATED, "event-1") == control_id(UPDATED, "event-1")
    assert control_id(UPDATED, "event-1") != control_id(UPDATED, "event-2")
    assert control_id(UPDATED, "event-1") != control_id(RENAMED, "event-1")
    assert len(control_id(UPDATED, "event-1")) <= 20
    msh = build_correction_adt(UPDATED, "RADBRIDGE", NOW, "A08", "event-1").decode().split("\r")[0]
    assert msh.split("|")[9] == control_id(UPDATED, "event-1")


def test_a_name_s_ideographic_and_phonetic_groups_are_pid5_repetitions_marked_by_xpn8() -> None:
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    patient = CorrectedPatient("583295", "HOSP", name, "19700101", "M", "583295", "HOSP")
    pid = build_correction_adt(patient, "RADBRIDGE", NOW, "A08", "k1").decode().split("\r")[2]
    assert pid.split("|")[5] == "Yamada^Tarou~山田^太郎^^^^^^I~やまだ^たろう^^^^^^P"
    kanji_only = CorrectedPatient("583295", "HOSP", "=山田^太郎", "19700101", "M", "583295", "HOSP")
    pid = build_correction_adt(kanji_only, "RADBRIDGE", NOW, "A08", "k1").decode().split("\r")[2]
    assert pid.split("|")[5] == "山田^太郎^^^^^^I"


def test_the_character_set_is_in_msh_18() -> None:
    """It was in MSH-17 (Country Code), one field short, as in the MPPS status message (new-user campaign)."""
    from engine.hl7.er7 import Message

    msh = Message(build_correction_adt(UPDATED, "RADBRIDGE", NOW, "A08", "k1").decode()).segment("MSH")
    assert (msh.value(12), msh.value(17), msh.value(18)) == ("2.5.1", "", "UNICODE UTF-8")
