"""The received data set hashed beside the store's checks (engine.archive.flush.HashAhead), not by the thread
that reads its PDUs; waited for before the spool is staged, and before a coerced spool gets its new head in place.

storescu sends real instances to the in-process SCP (one without its order, stored as received; one whose
images are matched and coerced); the hash's run and the changes of the coerced spools (the new front written in
place, a range inserted) are recorded.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from channels.dicom import storage as storage_module
from engine.archive import flush as flush_module
from engine.archive import rehead as rehead_module
from engine.domain.handlers import OrdersHandler, order_policy
from engine.domain.instance_tables import instances
from engine.reconcile import rewrite as rewrite_module
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import dataset_bytes, running_scp, storescu
from tests.domain.factories import apply_records, order, patient

pytestmark = needs_dcmtk
ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """HashAhead's runs (thread, end), the fronts written in place and the range insertions (start), in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()
        run, fallocate, front = flush_module.HashAhead._run, rehead_module._fallocate, storage_module.rewrite_front

        def hashed(ahead: flush_module.HashAhead) -> None:
            run(ahead)
            self._add("hashed", threading.current_thread().name)

        def inserted(*args: Any) -> int:
            self._add("insert", threading.current_thread().name)
            return fallocate(*args)  # type: ignore[misc]

        def rewritten(*args: Any) -> Any:
            self._add("front", threading.current_thread().name)
            return front(*args)

        monkeypatch.setattr(flush_module.HashAhead, "_run", hashed)
        monkeypatch.setattr(storage_module, "rewrite_front", rewritten)
        monkeypatch.setattr(rehead_module, "_fallocate", inserted)

    def _add(self, what: str, thread: str) -> None:
        with self._lock:
            self.events.append((what, thread, time.monotonic()))


def _files(corpus: Path) -> list[Path]:
    return sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))[:3]


def test_a_received_data_set_is_hashed_in_the_pool_and_its_hash_indexed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: Path) -> None:
    files = _files(corpus)
    with running_scp(tmp_path / "scp") as scp:
        recorder = Recorder(monkeypatch)
        done = storescu(scp.port, files)
        assert done.returncode == 0, done.stderr
        rows = scp.db.read(lambda c: c.execute(select(instances.c.sop_instance_uid, instances.c.sha256)).all())
        stored = {uid: dataset_bytes(scp.stored_path(uid)) for uid, _ in rows}
    assert len(rows) == 3
    assert all(sha == hashlib.sha256(stored[uid]).hexdigest() for uid, sha in rows)
    hashed = [e for e in recorder.events if e[0] == "hashed"]
    assert len(hashed) == 3 and all(thread.startswith("radbridge-hash") for _, thread, _ in hashed)


def _order_for_the_corpus_files(scp: Any) -> None:
    """The order the corpus files of :func:`_files` match (their images are coerced to it)."""
    apply_records(scp.db, OrdersHandler(order_policy(scp.config)), [
        patient("583295", patient_name="DOE^JOHN", birth_date="19600101", sex="M"),
        order("PL1", patient_id="583295", accession_number="MOF5026", modality="MR"),
    ])  # fmt: skip


def test_a_coerced_spool_gets_its_new_head_only_after_its_received_hash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: Path) -> None:
    files = _files(corpus)
    with running_scp(tmp_path / "plain") as scp:  # what storescu sends, as stored without an order
        assert storescu(scp.port, files).returncode == 0
        received = sorted(hashlib.sha256(dataset_bytes(scp.stored_path(row.sop_instance_uid))).hexdigest()
                          for row in scp.instances())
    with running_scp(tmp_path / "scp", mappings_dir=ROOT / "mappings") as scp:
        _order_for_the_corpus_files(scp)
        recorder = Recorder(monkeypatch)
        done = storescu(scp.port, files)
        assert done.returncode == 0, done.stderr
        rows = scp.db.read(lambda c: c.execute(select(instances.c.received_sha256)).scalars().all())
    assert len(received) == 3 and sorted(rows) == received  # the hash of the data set as received, not as coerced
    kinds = [what for what, _, _ in recorder.events]
    # Each spool hashed before it is changed in place: its new front written where the receiver left room
    # (engine.archive.part10.with_room), no range inserted (which writes the file back and drops its cache).
    assert kinds == ["hashed", "front"] * 3


def test_a_coerced_data_set_is_hashed_once_in_the_pool_not_again_by_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: Path) -> None:
    """The store asks whether the data set is stored as received (group 0000/0002 elements left out) before
    it waits for the hash: asking the coerced stream for the received hash then read and hashed the whole
    spool again in the C-STORE thread (a 1 GB instance: seconds), beside the hash pool's run."""
    files = _files(corpus)
    spool_hashes: list[str] = []
    computed = rewrite_module.CoercedStream.received_sha256

    def received_sha256(stream: rewrite_module.CoercedStream) -> str:
        if not stream._known:  # not told by the hash pool yet: hashed from the spool now
            spool_hashes.append(threading.current_thread().name)
        return computed.fget(stream)  # type: ignore[no-any-return,attr-defined]

    monkeypatch.setattr(rewrite_module.CoercedStream, "received_sha256", property(received_sha256))
    with running_scp(tmp_path / "scp", mappings_dir=ROOT / "mappings") as scp:
        _order_for_the_corpus_files(scp)
        recorder = Recorder(monkeypatch)
        done = storescu(scp.port, files)
        assert done.returncode == 0, done.stderr
        rows = scp.db.read(lambda c: c.execute(select(instances.c.sha256, instances.c.received_sha256)).all())
    assert len(rows) == 3 and all(sha != received for sha, received in rows)  # coerced, each
    assert [what for what, _, _ in recorder.events if what == "hashed"] == ["hashed"] * 3
    assert spool_hashes == []
