"""The order status (ORC-5) a procedure status message gives the RIS, from all of the order's steps."""

from __future__ import annotations

from datetime import datetime

import pytest

from engine.domain.status_message import StatusHeader, StepSummary, build_status_message, order_status


@pytest.mark.parametrize(("statuses", "expected"), [
    (["STARTED"], "IP"),
    (["COMPLETED"], "CM"),
    (["DISCONTINUED"], "DC"),
    (["COMPLETED", "SCHEDULED"], "IP"),
    (["COMPLETED", "STARTED"], "IP"),
    (["COMPLETED", "ARRIVED"], "IP"),
    (["COMPLETED", "DISCONTINUED"], "CM"),
    (["COMPLETED", "CANCELED"], "CM"),
    (["COMPLETED", "COMPLETED"], "CM"),
    (["DISCONTINUED", "CANCELED"], "DC"),
    (["DISCONTINUED", "SCHEDULED"], "SC"),
    (["DISCONTINUED", "STARTED"], "IP"),
    (["COMPLETED", "EXPIRED"], "CM"),
])  # fmt: skip
def test_the_order_is_complete_when_every_step_has_ended_and_one_was_completed(
        statuses: list[str], expected: str) -> None:
    assert order_status(statuses) == expected
    assert order_status(reversed(statuses)) == expected


def _step(sps: str, order_status: str = "") -> StepSummary:
    return StepSummary("MRN1", "NORTH", "DOE^JANE", "PL1", "FL1", "ACC1", "RP1", "1.2.3", sps, "CT", "CT1", "CT head",
                       order_status)


def _orc5s(message: bytes) -> list[str]:
    return [seg.split("|")[5] for seg in message.decode().split("\r") if seg.startswith("ORC|")]


def test_each_group_carries_its_order_s_status_and_a_lone_step_the_pps_status() -> None:
    header, now = StatusHeader("RADBRIDGE", "X", "RIS", "Y"), datetime(2026, 12, 7, 12)
    assert _orc5s(build_status_message(header, [_step("S1")], "COMPLETED", "C1", now)) == ["CM"]
    both = [_step("S1", "IP"), _step("S2", "CM")]
    assert _orc5s(build_status_message(header, both, "COMPLETED", "C2", now)) == ["IP", "CM"]


def test_the_character_set_is_in_msh_18() -> None:
    """It was in MSH-17 (Country Code), one field short: a RIS reading MSH-18 found none and read the UTF-8
    patient name in its default character set (new-user campaign, the status message of an MPPS)."""
    from engine.hl7.er7 import Message

    header = StatusHeader("RADBRIDGE", "X", "RIS", "Y")
    msh = Message(build_status_message(header, [_step("S1")], "COMPLETED", "C1", datetime(2026, 12, 7)).decode()
                  ).segment("MSH")
    assert (msh.value(12), msh.value(17), msh.value(18)) == ("2.5.1", "", "UNICODE UTF-8")
