"""Connection bookkeeping of the DICOM listener: host slots, ARTIM from outside, refusal reports."""

from __future__ import annotations

from channels.dicom.admission import ArtimClock, HostSlots, RefusalReport


def test_each_host_has_its_own_slots() -> None:
    slots = HostSlots(per_host=2)
    assert [slots.take("10.0.0.1") for _ in range(3)] == [True, True, False]
    assert slots.take("10.0.0.2")
    slots.give_back("10.0.0.1")
    assert slots.take("10.0.0.1")
    assert (slots.held("10.0.0.1"), slots.held("10.0.0.2"), slots.total()) == (2, 1, 3)


def test_artim_runs_only_in_the_states_it_bounds() -> None:
    clock = ArtimClock(timeout=10)
    assert not clock.expired("Sta2", 0.0)
    assert not clock.expired("Sta2", 9.0)
    assert clock.expired("Sta2", 10.5)
    assert not clock.expired("Sta6", 11.0)  # established: the idle timeout's business
    assert not clock.expired("Sta6", 500.0)
    assert not clock.expired("Sta13", 501.0)  # released: ARTIM starts again
    assert clock.expired("Sta13", 512.0)


def test_a_peer_stuck_before_the_transport_indication_is_bounded_too() -> None:
    clock = ArtimClock(timeout=1)
    assert not clock.expired("Sta1", 0.0)
    assert clock.expired("Sta1", 1.5)


def test_refusals_are_reported_once_per_interval_with_a_count() -> None:
    report = RefusalReport(interval=60)
    seen = [report.note("10.0.0.9", t) for t in (0.0, 1.0, 2.0, 30.0)]
    assert seen == [1, None, None, None]
    assert report.note("10.0.0.8", 31.0) == 1
    assert report.note("10.0.0.9", 61.0) == 4
