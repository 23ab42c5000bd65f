"""Fixity and tiering over a real SeaweedFS secondary, and the read API's fallback (in process)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from engine.archive.archive import copy_current, current_instance, open_current
from engine.archive.fixity import restore, verify
from engine.archive.tiering import tier
from engine.errors import CopyMissing
from tests.archive.replica_peer import copies, ct, replicate_until_sent, scp_with_secondary, send
from tests.archive.seaweed import Seaweed, running_seaweed


@pytest.fixture
def seaweed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seaweed]:
    with running_seaweed(tmp_path / "seaweed") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        server.client().create_bucket(Bucket="radbridge")  # type: ignore[attr-defined]
        yield server


def test_verify_finds_a_flipped_byte_and_a_lost_object_in_s3_and_restore_repairs_them(
        tmp_path: Path, corpus: Path, seaweed: Seaweed) -> None:
    with scp_with_secondary(tmp_path, "s3://radbridge/lta", s3={"endpoint_url": seaweed.endpoint}) as (scp, archive):
        assert send(scp.port, [ct(corpus, generate_uid()) for _ in range(3)]) == [0, 0, 0]
        replicate_until_sent(scp, archive)
        a, b, _ = scp.instances()
        client = seaweed.client()
        data = bytearray(client.get_object(Bucket="radbridge", Key=f"lta/{a.path}")["Body"].read())  # type: ignore
        data[-50] ^= 0x80
        client.put_object(Bucket="radbridge", Key=f"lta/{a.path}", Body=bytes(data))  # type: ignore
        client.delete_object(Bucket="radbridge", Key=f"lta/{b.path}")  # type: ignore
        checked, findings = verify(archive, scp.db)
        assert checked == 3
        assert {(f.sop_instance_uid, f.location, f.problem) for f in findings} == {
            (a.sop_instance_uid, "secondary", "DAMAGED"), (b.sop_instance_uid, "secondary", "MISSING")}
        repairs = restore(archive, scp.db)
        assert {(r.sop_instance_uid, r.location, r.ok) for r in repairs} == {
            (a.sop_instance_uid, "secondary", True), (b.sop_instance_uid, "secondary", True)}
        assert verify(archive, scp.db)[1] == []
        for row in (a, b):
            stored = client.get_object(Bucket="radbridge", Key=f"lta/{row.path}")["Body"].read()  # type: ignore
            assert stored == (scp.archive / row.path).read_bytes()


def test_tiering_removes_only_verified_copies_and_reads_fall_back_to_s3(
        tmp_path: Path, corpus: Path, seaweed: Seaweed) -> None:
    with scp_with_secondary(tmp_path, "s3://radbridge/", s3={"endpoint_url": seaweed.endpoint}) as (scp, archive):
        study = generate_uid()
        assert send(scp.port, [ct(corpus, study)]) == [0]
        replicate_until_sent(scp, archive)
        assert send(scp.port, [ct(corpus, study)]) == [0]  # its copy is still owed (PENDING)
        old, new = scp.instances()
        original = (scp.archive / old.path).read_bytes()
        assert tier(archive, scp.db, timedelta(days=30)) == 0  # not old enough
        assert tier(archive, scp.db, timedelta(0)) == 1
        assert not (scp.archive / old.path).exists() and (scp.archive / new.path).exists()
        state = copies(scp)
        assert (state[old.id].primary_state, state[new.id].primary_state) == ("TIERED", "PRESENT")
        assert state[old.id].primary_removed_at is not None
        inst = scp.db.read(lambda c: current_instance(c, old.sop_instance_uid))
        assert inst is not None
        with open_current(archive, inst) as reader:
            assert reader.read() == original
        out = io.BytesIO()
        assert copy_current(archive, inst, out) == "secondary" and out.getvalue() == original
        assert verify(archive, scp.db)[1] == []


def test_copy_current_skips_a_damaged_primary_and_fails_without_an_intact_copy(tmp_path: Path, corpus: Path) -> None:
    with scp_with_secondary(tmp_path, str(tmp_path / "second")) as (scp, archive):
        assert send(scp.port, [ct(corpus, generate_uid())]) == [0]
        replicate_until_sent(scp, archive)
        (row,) = scp.instances()
        original = (scp.archive / row.path).read_bytes()
        (scp.archive / row.path).write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        inst = scp.db.read(lambda c: current_instance(c, row.sop_instance_uid))
        assert inst is not None
        out = io.BytesIO()
        assert copy_current(archive, inst, out) == "secondary" and out.getvalue() == original
        (tmp_path / "second" / row.path).unlink()
        with pytest.raises(CopyMissing, match="no intact copy"):
            copy_current(archive, inst, io.BytesIO())
