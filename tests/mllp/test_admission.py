"""Admission's counting, as pure logic (channels/mllp/limits.py)."""

import logging
from dataclasses import dataclass, field

from channels.mllp.limits import SMALL_FRAME_BYTES, Admission, Throttled


@dataclass(eq=False)
class Conn:
    host: str
    at: float | None = 0.0  # None: working
    events: list[str] = field(default_factory=list)

    def idle_since(self) -> float | None:
        return self.at

    def evict(self) -> None:
        self.events.append("evicted")

    def resume(self) -> None:
        self.events.append("resumed")


def test_a_peer_over_its_limit_replaces_its_own_longest_idle_connection():
    adm: Admission[Conn] = Admission(10, 2, 1000)
    a, b, other = Conn("p", 5.0), Conn("p", 1.0), Conn("q", 0.0)
    for conn in (a, b, other):
        assert adm.admit(conn) == (True, None)
    c = Conn("p", 9.0)
    assert adm.admit(c) == (True, b)  # b idle the longest among p's; q's older one is not touched
    assert b.events == ["evicted"] and adm.per_peer == {"p": 2, "q": 1}
    assert adm.connections == {a, c, other}


def test_at_the_global_limit_anybodys_longest_idle_connection_makes_room():
    adm: Admission[Conn] = Admission(2, 2, 1000)
    old, new = Conn("p", 1.0), Conn("q", 2.0)
    adm.admit(old)
    adm.admit(new)
    assert adm.admit(Conn("r")) == (True, old)


def test_working_connections_are_never_evicted_so_the_new_one_is_refused():
    adm: Admission[Conn] = Admission(2, 2, 1000)
    busy = [Conn("p", None), Conn("q", None)]
    for conn in busy:
        adm.admit(conn)
    assert adm.admit(Conn("r")) == (False, None)
    assert all(c.events == [] for c in busy) and len(adm.connections) == 2


def test_forget_is_idempotent_and_drops_empty_peers():
    adm: Admission[Conn] = Admission(5, 5, 1000)
    conn = Conn("p")
    adm.admit(conn)
    adm.forget(conn)
    adm.forget(conn)
    assert adm.connections == set() and adm.per_peer == {}


def test_only_large_unfinished_frames_are_held_back_and_all_resume_under_three_quarters():
    adm: Admission[Conn] = Admission(5, 5, 1000)
    adm.change(1001)
    assert adm.over(SMALL_FRAME_BYTES) and not adm.over(SMALL_FRAME_BYTES - 1)
    waiting = [Conn("p"), Conn("q")]
    adm.starved.extend(waiting)
    adm.change(-200)  # 801: still over three quarters
    assert all(c.events == [] for c in waiting)
    adm.change(-51)  # 750
    assert all(c.events == ["resumed"] for c in waiting) and adm.starved == []


def test_a_throttled_log_line_repeats_at_most_once_per_period_with_a_count(caplog):
    say = Throttled(logging.getLogger("t"), logging.WARNING, every=3600)
    with caplog.at_level(logging.WARNING):
        for n in range(5):
            say("refused %s", n)
    assert [r.getMessage() for r in caplog.records] == ["refused 0 (1 time(s) in the last 3600 s)"]
