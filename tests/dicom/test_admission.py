"""Connection bookkeeping of the DICOM listener: host slots, ARTIM from outside, refusal reports."""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest

from channels.dicom.admission import ArtimClock, HostSlots, RefusalReport
from channels.dicom.listener import Contexts


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


def test_refusals_from_ever_new_hosts_keep_a_bounded_record() -> None:
    """Each refused address was remembered for good: one entry per address that was ever refused."""
    report = RefusalReport(interval=60, hosts_kept=100)
    for n in range(10_000):
        assert report.note(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", float(n)) == 1  # one a second
    assert len(report) <= 100
    assert report.note("10.0.39.15", 9_999.5) is None  # a host reported within the interval is still held back


def _storage_ae() -> Any:
    from pynetdicom import AE

    from channels.dicom.storage import add_storage_contexts

    ae = AE()
    add_storage_contexts(ae)
    return ae


def test_each_association_gets_its_own_copy_of_the_contexts_as_deepcopy_would_make_it() -> None:
    contexts = Contexts(_storage_ae().supported_contexts)
    copied, reference = copy.deepcopy(contexts), copy.deepcopy(list(contexts))
    assert isinstance(copied, Contexts) and len(copied) == len(reference) > 100
    for original, new, ref in zip(contexts, copied, reference, strict=True):
        assert type(new) is type(original) and new is not original
        assert vars(new) == vars(ref)  # same abstract syntax, transfer syntaxes, id, roles, result
        assert new.transfer_syntax == original.transfer_syntax
        new.transfer_syntax.append("1.2.3")  # what one association changes, the server's contexts never see
        new.context_id = 7
        new.scp_role = True
        assert "1.2.3" not in original.transfer_syntax
        assert (original.context_id, original.scp_role) == (ref.context_id, ref.scp_role)


def test_the_listener_hands_each_association_the_cheap_copy(tmp_path: Path) -> None:
    from pynetdicom.transport import RequestHandler

    from channels.dicom.listener import ConnectionGuard, GuardedServer, Limits

    ae = _storage_ae()
    guard = ConnectionGuard(Limits(per_host=2, artim_seconds=5, idle_seconds=5))
    server = GuardedServer(ae, ("127.0.0.1", 0), "RADBRIDGE", ae.supported_contexts, guard=guard)
    try:
        assert isinstance(server.contexts, Contexts)
        before = copy.deepcopy
        calls: list[Any] = []

        def spying(obj: Any, memo: Any = None) -> Any:
            calls.append(type(obj))
            return before(obj, memo)

        handler = RequestHandler.__new__(RequestHandler)
        handler.server, handler.request, handler.client_address = server, socket.socket(), ("127.0.0.1", 1)
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr("pynetdicom.transport.deepcopy", spying)
                assoc = handler._create_association()
        finally:
            handler.request.close()
        assert calls == [Contexts]
        assert len(assoc.acceptor.supported_contexts) == len(server.contexts)
    finally:
        server.server_close()


def test_uid_validation_is_remembered_with_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    from pynetdicom import _config

    from channels.dicom.server import cache_uid_validation

    original = _config.VALIDATORS["UI"]
    seen: list[str] = []

    def counting(value: Any) -> tuple[bool, str]:
        seen.append(str(value))
        return original(value)  # type: ignore[no-any-return]

    monkeypatch.setitem(_config.VALIDATORS, "UI", counting)
    cache_uid_validation()
    cache_uid_validation()  # once: not wrapped twice
    cached = _config.VALIDATORS["UI"]
    samples = ["1.2.840.10008.1.2.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.04", "1.2.a", "9" * 65, ""]
    assert [cached(v) for v in samples] == [original(v) for v in samples]
    assert [cached(v) for v in samples] == [original(v) for v in samples]
    assert seen == samples  # each validated once
    assert cached.__wrapped__ is counting
