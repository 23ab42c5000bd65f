"""Pure parts of forwarding: the C-STORE status table, proposed contexts, the association pool's bookkeeping,
StoreLink's framing of a file (over a socket pair)."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from channels.dicom.associations import MAX_CONTEXTS, AssociationPool, contexts_for
from channels.dicom.destination import _association_failure
from channels.dicom.forward_source import InstanceFile
from channels.dicom.store_link import UNLIMITED_FRAGMENT, Fixity, SourceDamaged, StoreLink
from channels.dicom.store_status import Outcome, classify_store_status

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(("status", "outcome"), [
    (0x0000, Outcome.DELIVERED), (0xB000, Outcome.DELIVERED), (0xB007, Outcome.DELIVERED),
    (0x0001, Outcome.DELIVERED), (0xA700, Outcome.RETRYABLE), (0xA7FF, Outcome.RETRYABLE),
    (0xA900, Outcome.PERMANENT), (0xA9FF, Outcome.PERMANENT), (0xC000, Outcome.PERMANENT),
    (0xC221, Outcome.PERMANENT), (0x0122, Outcome.PERMANENT), (0x0111, Outcome.PERMANENT),
    (0x0110, Outcome.RETRYABLE), (0xFE00, Outcome.RETRYABLE), (0x0456, Outcome.RETRYABLE),
])  # fmt: skip
def test_status_table(status: int, outcome: Outcome) -> None:
    assert classify_store_status(status).outcome is outcome


def test_an_uncompressed_syntax_gets_a_fallback_context_and_a_compressed_one_does_not() -> None:
    explicit = contexts_for((CT, ExplicitVRLittleEndian), convert=True)
    assert [list(cx.transfer_syntax) for cx in explicit] == [[ExplicitVRLittleEndian], [ImplicitVRLittleEndian]]
    assert [list(cx.transfer_syntax) for cx in contexts_for((CT, JPEGBaseline8Bit), convert=True)] == [
        [JPEGBaseline8Bit]]
    assert len(contexts_for((CT, ExplicitVRLittleEndian), convert=False)) == 1


class _Assoc:
    def __init__(self, contexts: list[Any]) -> None:
        self.contexts = contexts
        self.is_established = True
        self.released = False

    def release(self) -> None:
        self.is_established = False
        self.released = True


class _Opener:
    def __init__(self) -> None:
        self.opened: list[_Assoc] = []

    def __call__(self, contexts: list[Any]) -> _Assoc:
        assoc = _Assoc(contexts)
        self.opened.append(assoc)
        return assoc


def _pool(opener: _Opener, max_associations: int = 2, idle: float = 30.0) -> AssociationPool:
    return AssociationPool(opener, max_associations, idle, convert=True)


def test_an_idle_association_is_reused_for_the_same_pair() -> None:
    opener = _Opener()
    pool = _pool(opener)
    for _ in range(5):
        pooled, _ = pool.acquire((CT, ExplicitVRLittleEndian), timeout=1)
        assert pooled is not None
        pool.give_back(pooled, keep=True)
    assert len(opener.opened) == 1
    pool.close()
    assert opener.opened[0].released


def test_a_new_pair_opens_an_association_proposing_the_recent_pairs_too() -> None:
    opener = _Opener()
    pool = _pool(opener, max_associations=1)
    first, _ = pool.acquire((CT, ExplicitVRLittleEndian), timeout=1)
    assert first is not None
    pool.give_back(first, keep=True)
    second, _ = pool.acquire((CT, JPEGBaseline8Bit), timeout=1)
    assert second is not None
    assert opener.opened[0].released  # the limit is one: the idle one gave way
    assert {(CT, ExplicitVRLittleEndian), (CT, JPEGBaseline8Bit)} == set(second.proposed)
    pool.give_back(second, keep=True)
    third, _ = pool.acquire((CT, ExplicitVRLittleEndian), timeout=1)  # now covered: reused
    assert third is second
    pool.give_back(third, keep=True)
    pool.close()


def test_proposals_stay_within_the_context_id_limit() -> None:
    opener = _Opener()
    pool = _pool(opener, max_associations=1)
    for n in range(200):
        pooled, _ = pool.acquire((f"1.2.3.{n}", ExplicitVRLittleEndian), timeout=1)
        assert pooled is not None
        pool.give_back(pooled, keep=True)
    assert all(len(a.contexts) <= MAX_CONTEXTS for a in opener.opened)
    pool.close()


def test_idle_associations_are_released_after_idle_seconds() -> None:
    opener = _Opener()
    pool = _pool(opener, idle=0.2)
    pooled, _ = pool.acquire((CT, ExplicitVRLittleEndian), timeout=1)
    assert pooled is not None
    pool.give_back(pooled, keep=True)
    deadline = time.monotonic() + 5
    while not opener.opened[0].released and time.monotonic() < deadline:
        time.sleep(0.05)
    assert opener.opened[0].released
    pool.close()


def test_a_broken_association_is_not_kept() -> None:
    opener = _Opener()
    pool = _pool(opener)
    pooled, _ = pool.acquire((CT, ExplicitVRLittleEndian), timeout=1)
    assert pooled is not None
    pool.give_back(pooled, keep=False)
    again, _ = pool.acquire((CT, ExplicitVRLittleEndian), timeout=1)
    assert again is not None and again is not pooled
    assert len(opener.opened) == 2
    pool.give_back(again, keep=True)
    pool.close()


def test_no_more_than_max_associations_are_in_use() -> None:
    opener = _Opener()
    pool = _pool(opener, max_associations=1)
    held, _ = pool.acquire((CT, ExplicitVRLittleEndian), timeout=1)
    with pytest.raises(TimeoutError):
        pool.acquire((CT, ExplicitVRLittleEndian), timeout=0.1)
    assert held is not None
    pool.give_back(held, keep=True)
    pool.close()


# --- StoreLink's framing of a file's dataset (channels/dicom/store_link.py) -------------------------

def _part10(tmp_path: Path, dataset: bytes) -> Path:
    """A file with a minimal File Meta group (only the group length) before ``dataset``."""
    meta = b""
    head = b"\0" * 128 + b"DICM" + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(meta)) + meta
    path = tmp_path / "instance.dcm"
    path.write_bytes(head + dataset)
    return path


def _write(path: Path, fixity: Fixity | None, max_length: int) -> tuple[list[tuple[int, int, bytes]], Exception | None]:
    """Run StoreLink._write_file over a socket pair; the PDUs the peer received (context, control, data)."""
    ours, peer = socket.socketpair()
    received = bytearray()

    def drain() -> None:
        while part := peer.recv(1 << 16):
            received.extend(part)

    reader = threading.Thread(target=drain)
    reader.start()
    error: Exception | None = None
    try:
        StoreLink(ours, [], max_length, 5.0)._write_file(ours, path, 3, fixity)
    except SourceDamaged as exc:
        error = exc
    finally:
        ours.close()
        reader.join(10)
        peer.close()
    out, pos = [], 0
    while pos < len(received):
        kind, _, length = struct.unpack_from(">BBI", received, pos)
        assert kind == 0x04
        (pdv_length,) = struct.unpack_from(">I", received, pos + 6)
        assert pdv_length == length - 4
        out.append((received[pos + 10], received[pos + 11], bytes(received[pos + 12:pos + 6 + length])))
        pos += 6 + length
    return out, error


@pytest.mark.parametrize("max_length", [16384, 4096 + 6, 0])
def test_the_dataset_is_sent_in_fragments_of_the_peer_maximum_with_the_last_one_marked(
        tmp_path: Path, max_length: int) -> None:
    dataset = os.urandom(300_001)
    path = _part10(tmp_path, dataset)
    fixity = Fixity(len(dataset), hashlib.sha256(dataset).hexdigest())
    sent, error = _write(path, fixity, max_length)
    assert error is None
    assert b"".join(data for _, _, data in sent) == dataset
    assert {context for context, _, _ in sent} == {3}
    assert [control for _, control, _ in sent] == [0x00] * (len(sent) - 1) + [0x02]
    limit = max_length - 6 if max_length else UNLIMITED_FRAGMENT
    assert all(len(data) <= limit for _, _, data in sent)


def test_a_damaged_file_streams_its_first_batches_but_never_its_last_fragment(tmp_path: Path) -> None:
    """The peer is receiving while the rest is hashed; what does not match never completes."""
    dataset = os.urandom(512 * 1024)
    path = _part10(tmp_path, dataset)
    recorded = Fixity(len(dataset), hashlib.sha256(dataset[:-1] + bytes([dataset[-1] ^ 0xFF])).hexdigest())
    sent, error = _write(path, recorded, 16384)
    assert isinstance(error, SourceDamaged)
    assert sent, "nothing left before the whole image was hashed"
    assert all(control == 0x00 for _, control, _ in sent)
    assert sum(len(data) for _, _, data in sent) < len(dataset)


def test_a_file_of_another_size_than_recorded_sends_nothing(tmp_path: Path) -> None:
    dataset = os.urandom(70_000)
    path = _part10(tmp_path, dataset)
    sent, error = _write(path, Fixity(len(dataset) + 1, hashlib.sha256(dataset).hexdigest()), 16384)
    assert isinstance(error, SourceDamaged)
    assert sent == []


def test_a_peer_refusing_every_context_is_a_dead_letter_whose_log_line_says_why(tmp_path: Path) -> None:
    """The log of such a dead letter said only ``outbox pacs: row 34 attempt 1 failed (ERROR): PermanentDelivery``
    (new-user campaign: storescp accepting uncompressed images only, a JPEG 2000 image): the reason was in
    ``outbox list`` alone, though it names only UIDs, syntaxes and the peer (DeliveryError.public)."""
    assoc = type("Refused", (), {"is_rejected": False, "rejected_contexts": [object()], "accepted_contexts": []})()
    file = InstanceFile(tmp_path / "x.dcm", CT, "1.2.3.4", "1.2.840.10008.1.2.4.91")

    failure = _association_failure(assoc, "PACS@127.0.0.1:11204", file, convert=False)

    assert failure.public == str(failure)
    assert failure.public.startswith("PACS@127.0.0.1:11204: the peer refuses SOP class " + CT)
    assert "JPEG 2000" in failure.public
