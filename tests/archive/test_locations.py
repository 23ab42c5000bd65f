"""The Location contract, for a directory and for a real S3 store (SeaweedFS), and fixity over it."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.archive.fs_location import FileLocation
from engine.archive.objects import Location, fixity
from engine.archive.part10 import encode_file_meta
from engine.archive.s3_location import S3Location, s3_client
from engine.errors import ArchiveUnavailable, CopyMissing, MalformedDataset
from tests.archive.seaweed import Seaweed, running_seaweed

META = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", "CT1")
DATASET = b"\x08\x00\x18\x00UI\x08\x001.2.3.4\x00" + bytes(range(256)) * 40


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


BUCKET = "archive"  # one bucket: SeaweedFS grows volumes per bucket, and has few


def _s3(seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch, prefix: str) -> S3Location:
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    client = s3_client(seaweed.endpoint, None)
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)
    return S3Location("secondary", BUCKET, prefix, client)


@pytest.fixture(params=["directory", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Location:
    if request.param == "directory":
        return FileLocation("secondary", tmp_path / "loc")
    seaweed = request.getfixturevalue("seaweed")
    return _s3(seaweed, monkeypatch, f"t{abs(hash(request.node.name)) % 10**8}/archive/")


def test_put_then_open_stat_iterate_and_delete(location: Location) -> None:
    location.check()
    assert location.put("1.2/3.4/5.6.dcm", io.BytesIO(DATASET), head=META) is True
    with location.open("1.2/3.4/5.6.dcm") as reader:
        assert reader.read() == META + DATASET
    stat = location.stat("1.2/3.4/5.6.dcm")
    assert stat is not None and stat.size == len(META) + len(DATASET)
    assert list(location.iterate()) == ["1.2/3.4/5.6.dcm"]
    location.delete("1.2/3.4/5.6.dcm")
    assert location.stat("1.2/3.4/5.6.dcm") is None and list(location.iterate()) == []
    location.delete("1.2/3.4/5.6.dcm")  # absent: not an error
    if isinstance(location, FileLocation):  # no empty study and series directories are left behind
        assert sorted(p.name for p in location.root.iterdir()) == [".incoming"]


def test_put_without_replace_never_overwrites(location: Location) -> None:
    location.check()
    assert location.put("a/b.dcm", io.BytesIO(b"first")) is True
    assert location.put("a/b.dcm", io.BytesIO(b"second"), replace=False) is False
    with location.open("a/b.dcm") as reader:
        assert reader.read() == b"first"
    assert location.put("a/b.dcm", io.BytesIO(b"third"), replace=True) is True
    with location.open("a/b.dcm") as reader:
        assert reader.read() == b"third"


def test_opening_an_absent_object_is_copy_missing(location: Location) -> None:
    location.check()
    with pytest.raises(CopyMissing):
        location.open("no/such.dcm")


def test_fixity_covers_the_meta_and_the_dataset_separately(location: Location) -> None:
    location.check()
    location.put("x.dcm", io.BytesIO(DATASET), head=META)
    found = fixity(location, "x.dcm")
    assert found.sha256 == hashlib.sha256(DATASET).hexdigest()
    assert found.meta_sha256 == hashlib.sha256(META).hexdigest() and found.size == len(DATASET)
    location.put("y.dcm", io.BytesIO(b"not a part 10 file at all"))
    with pytest.raises(MalformedDataset):
        fixity(location, "y.dcm")


def test_an_unreachable_store_is_archive_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    location = S3Location("secondary", "bucket", "", s3_client(f"http://127.0.0.1:{free_port()}", "us-east-1"))
    with pytest.raises(ArchiveUnavailable, match="cannot be written"):
        location.check()
    with pytest.raises(ArchiveUnavailable) as raised:
        location.open("a.dcm")
    assert not isinstance(raised.value, CopyMissing)


def test_a_missing_bucket_fails_the_check(seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch) -> None:
    location = _s3(seaweed, monkeypatch, "present/")
    missing = S3Location("secondary", "absent-bucket", "", location.client)
    with pytest.raises(ArchiveUnavailable, match="absent-bucket"):
        missing.check()


def test_directory_iteration_skips_temporary_and_quarantine_files(tmp_path: Path) -> None:
    location = FileLocation("primary", tmp_path)
    location.check()
    (tmp_path / ".incoming" / "x.part").write_bytes(b"")
    (tmp_path / ".quarantine").mkdir()
    (tmp_path / ".quarantine" / "q.dcm").write_bytes(b"")
    location.put("s/i.dcm", io.BytesIO(b"1"))
    assert list(location.iterate()) == ["s/i.dcm"]
