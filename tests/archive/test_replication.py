"""Copies to the secondary location: queued with the index row, copied by the outbox, verified by checksum.

Real peers: pynetdicom as the modality, a directory and a real SeaweedFS as the secondary.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from engine.archive.part10 import dataset_offset
from tests.archive.replica_peer import (
    copies,
    copy_rows,
    ct,
    replicate,
    replicate_until_sent,
    scp_with_secondary,
    send,
)
from tests.archive.seaweed import Seaweed, running_seaweed
from tests.conftest import need


def _assert_replicated(scp, read_secondary) -> None:  # type: ignore[no-untyped-def]
    rows = scp.instances()
    state = copies(scp)
    for row in rows:
        primary = (scp.archive / row.path).read_bytes()
        assert read_secondary(row.path) == primary
        assert hashlib.sha256(primary[dataset_offset(primary[:1 << 16]):]).hexdigest() == row.sha256
        assert state[row.id].secondary_state == "VERIFIED" and state[row.id].secondary_verified_at is not None
    assert [r.status for r in copy_rows(scp)] == ["SENT"] * len(rows)


def test_each_stored_instance_owes_one_copy_queued_with_its_index_row(
        tmp_path: Path, corpus: Path, db_url: str) -> None:
    with scp_with_secondary(tmp_path, str(tmp_path / "second"), db_url) as (scp, _):
        study = generate_uid()
        assert send(scp.port, [ct(corpus, study) for _ in range(3)]) == [0, 0, 0]
        rows, queued, state = scp.instances(), copy_rows(scp), copies(scp)
        assert len(queued) == 3 and {q.status for q in queued} == {"QUEUED"}
        assert [q.ordering_key for q in queued] == [r.sop_instance_uid for r in rows]
        meta = {r.id: (scp.archive / r.path).read_bytes()[:dataset_offset((scp.archive / r.path).read_bytes())]
                for r in rows}
        for r in rows:
            assert state[r.id].secondary_state == "PENDING" and state[r.id].primary_state == "PRESENT"
            assert state[r.id].meta_sha256 == hashlib.sha256(meta[r.id]).hexdigest()
        assert not (tmp_path / "second").exists() or list((tmp_path / "second").rglob("*.dcm")) == []


def test_an_identical_resend_owes_no_second_copy(tmp_path: Path, corpus: Path) -> None:
    with scp_with_secondary(tmp_path, str(tmp_path / "second")) as (scp, _):
        ds = ct(corpus, generate_uid())
        assert send(scp.port, [ds, ds]) == [0, 0]
        assert len(copy_rows(scp)) == 1


def test_copies_reach_a_directory_secondary_byte_identical_and_verified(
        tmp_path: Path, corpus: Path, db_url: str) -> None:
    second = tmp_path / "second"
    with scp_with_secondary(tmp_path, str(second), db_url) as (scp, archive):
        assert send(scp.port, [ct(corpus, generate_uid()) for _ in range(3)]) == [0, 0, 0]
        archive.secondary.check()  # type: ignore[union-attr]
        assert replicate(scp, archive) == 3
        _assert_replicated(scp, lambda path: (second / path).read_bytes())
        assert oct((second / scp.instances()[0].path).stat().st_mode & 0o777) == "0o600"


@pytest.fixture
def seaweed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seaweed]:
    with running_seaweed(tmp_path / "seaweed") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        server.client().create_bucket(Bucket="radbridge")  # type: ignore[attr-defined]
        yield server


def _s3_reader(seaweed: Seaweed, prefix: str):  # type: ignore[no-untyped-def]
    client = seaweed.client()
    return lambda path: client.get_object(Bucket="radbridge", Key=prefix + path)["Body"].read()  # type: ignore


def test_copies_reach_seaweedfs_byte_identical_and_verified(tmp_path: Path, corpus: Path, seaweed: Seaweed) -> None:
    with scp_with_secondary(tmp_path, "s3://radbridge/site-a", s3={"endpoint_url": seaweed.endpoint}) as (
            scp, archive):
        assert send(scp.port, [ct(corpus, generate_uid()) for _ in range(3)]) == [0, 0, 0]
        assert replicate(scp, archive) == 3
        _assert_replicated(scp, _s3_reader(seaweed, "site-a/"))


def test_stores_succeed_while_seaweedfs_is_down_and_copies_catch_up(
        tmp_path: Path, corpus: Path, seaweed: Seaweed) -> None:
    with scp_with_secondary(tmp_path, "s3://radbridge/", s3={"endpoint_url": seaweed.endpoint}) as (scp, archive):
        seaweed.kill()
        assert send(scp.port, [ct(corpus, generate_uid()) for _ in range(3)]) == [0, 0, 0]
        assert all((scp.archive / r.path).is_file() for r in scp.instances())  # durable in the primary
        replicate(scp, archive)
        queued = copy_rows(scp)
        assert {q.status for q in queued} == {"QUEUED"} and all(q.attempts >= 1 for q in queued)
        assert {c.secondary_state for c in copies(scp).values()} == {"PENDING"}
        seaweed.start()  # same directory and ports: the store comes back
        replicate_until_sent(scp, archive)
        _assert_replicated(scp, _s3_reader(seaweed, ""))


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "second"
    mount.mkdir()
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    need(done.returncode == 0, f"cannot mount a tmpfs: {done.stderr!r}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_stores_succeed_while_the_secondary_directory_is_unwritable_and_copies_catch_up(
        tmp_path: Path, corpus: Path, read_only_mount: Path) -> None:
    with scp_with_secondary(tmp_path, str(read_only_mount)) as (scp, archive):
        subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True)
        assert send(scp.port, [ct(corpus, generate_uid()) for _ in range(2)]) == [0, 0]
        replicate(scp, archive)
        assert {(q.status, q.attempts > 0) for q in copy_rows(scp)} == {("QUEUED", True)}
        assert "EROFS" in copy_rows(scp)[0].last_error
        subprocess.run(["mount", "-o", "remount,rw", str(read_only_mount)], check=True)
        replicate_until_sent(scp, archive)
        _assert_replicated(scp, lambda path: (read_only_mount / path).read_bytes())


def _replaced(corpus: Path, scp) -> tuple:  # type: ignore[no-untyped-def]
    """Store an instance, then a new version of it (same SOP Instance UID, other content)."""
    ds = ct(corpus, generate_uid())
    assert send(scp.port, [ds]) == [0]
    (first,) = scp.instances()
    ds.InstanceNumber = 99
    assert send(scp.port, [ds]) == [0]
    (second,) = scp.instances()
    assert first.sha256 != second.sha256
    return first, second


def test_a_copy_of_a_replaced_version_never_marks_the_new_version_verified(
        tmp_path: Path, corpus: Path, db_url: str) -> None:
    from datetime import UTC, datetime

    from engine.archive.replication import _mark_verified

    with scp_with_secondary(tmp_path, str(tmp_path / "second"), db_url) as (scp, archive):
        first, second = _replaced(corpus, scp)
        assert [r.ordering_key for r in copy_rows(scp)] == [first.sop_instance_uid] * 2
        scp.db.writer.call(lambda c: _mark_verified(c, first.id, first.sha256, datetime.now(UTC)))
        assert copies(scp)[second.id].secondary_state == "PENDING"
        replicate_until_sent(scp, archive)  # row 1: the replaced version; row 2: the new one
        assert copy_rows(scp)[0].response.startswith("old version copied")  # history is replicated too
        assert copies(scp)[second.id].secondary_state == "VERIFIED"
        assert (tmp_path / "second" / second.path).read_bytes() == (scp.archive / second.path).read_bytes()


def test_tiering_leaves_an_instance_replaced_since_it_was_picked(
        tmp_path: Path, corpus: Path, db_url: str) -> None:
    from datetime import UTC, datetime

    from engine.archive.archive import current_instance
    from engine.archive.tiering import _mark

    with scp_with_secondary(tmp_path, str(tmp_path / "second"), db_url) as (scp, archive):
        ds = ct(corpus, generate_uid())
        assert send(scp.port, [ds]) == [0]
        replicate_until_sent(scp, archive)
        (row,) = scp.instances()
        picked = scp.db.read(lambda c: current_instance(c, row.sop_instance_uid))
        ds.InstanceNumber = 99
        assert send(scp.port, [ds]) == [0]  # a new version arrives between the pick and the marking,
        replicate_until_sent(scp, archive)  # and its copy is verified too
        assert copies(scp)[row.id].secondary_state == "VERIFIED"
        assert scp.db.writer.call(lambda c: _mark(c, picked, datetime.now(UTC))) is False
        assert copies(scp)[row.id].primary_state == "PRESENT"


def test_instances_stored_without_a_secondary_are_owed_one_copy_each_once_one_is_configured(
        tmp_path: Path, corpus: Path, db_url: str) -> None:
    from engine.archive.service import backfill_copies
    from tests.dicom.store_peer import running_scp

    with running_scp(tmp_path / "plain", db_url) as scp:
        assert send(scp.port, [ct(corpus, generate_uid()) for _ in range(2)]) == [0, 0]
        assert copy_rows(scp) == [] and {c.secondary_state for c in copies(scp).values()} == {"NONE"}
        assert backfill_copies(scp.db) == 2
        assert backfill_copies(scp.db) == 0  # owed once
        assert [r.ordering_key for r in copy_rows(scp)] == [r.sop_instance_uid for r in scp.instances()]
        assert {c.secondary_state for c in copies(scp).values()} == {"PENDING"}
