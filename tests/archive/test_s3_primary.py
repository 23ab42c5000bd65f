"""C-STORE into a primary location in a real S3 store (SeaweedFS): success only after the PUT returned.

pynetdicom is the modality; the spool stays local (``archive.primary``).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from engine.archive.archive import archive_from_config, copy_current, current_instance
from tests.archive.replica_peer import copies, ct, replicate_until_sent, send
from tests.archive.seaweed import Seaweed, running_seaweed
from tests.dicom.store_peer import dataset_bytes, running_scp


@pytest.fixture
def seaweed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seaweed]:
    with running_seaweed(tmp_path / "seaweed") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        server.client().create_bucket(Bucket="radbridge")  # type: ignore[attr-defined]
        yield server


def _keys(seaweed: Seaweed, prefix: str) -> list[str]:
    listing = seaweed.client().list_objects_v2(Bucket="radbridge", Prefix=prefix)  # type: ignore[attr-defined]
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _settings(seaweed: Seaweed, tmp_path: Path, **extra: object) -> dict[str, object]:
    return {"primary": str(tmp_path / "spool"), "primary_s3": "s3://radbridge/pacs",
            "s3": {"endpoint_url": seaweed.endpoint}, **extra}


def test_a_stored_instance_is_an_object_in_the_store_and_nothing_stays_local(
        tmp_path: Path, corpus: Path, seaweed: Seaweed) -> None:
    with running_scp(tmp_path, archive=_settings(seaweed, tmp_path)) as scp:
        ds = ct(corpus, generate_uid())
        assert send(scp.port, [ds, ds]) == [0, 0]  # the resend changes nothing
        (row,) = scp.instances()
        assert _keys(seaweed, "pacs/") == [f"pacs/{row.path}"]
        body = seaweed.client().get_object(Bucket="radbridge", Key=f"pacs/{row.path}")["Body"].read()  # type: ignore
        local = tmp_path / "body.dcm"
        local.write_bytes(body)
        assert hashlib.sha256(dataset_bytes(local)).hexdigest() == row.sha256 and len(dataset_bytes(local)) == row.size
        assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []
        inst = scp.db.read(lambda c: current_instance(c, row.sop_instance_uid))
        out = io.BytesIO()
        assert copy_current(archive_from_config(scp.config), inst, out) == "primary"  # type: ignore[arg-type]
        assert out.getvalue() == body


def test_a_store_that_is_down_answers_out_of_resources_and_keeps_nothing(
        tmp_path: Path, corpus: Path, seaweed: Seaweed) -> None:
    with running_scp(tmp_path, archive=_settings(seaweed, tmp_path)) as scp:
        seaweed.kill()
        assert send(scp.port, [ct(corpus, generate_uid())]) == [0xA700]
        assert scp.instances() == []
        assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []
        seaweed.start()
        assert send(scp.port, [ct(corpus, generate_uid())]) == [0]
        (row,) = scp.instances()
        assert _keys(seaweed, "pacs/") == [f"pacs/{row.path}"]


def test_an_s3_primary_replicates_to_a_directory_secondary(tmp_path: Path, corpus: Path, seaweed: Seaweed) -> None:
    second = tmp_path / "second"
    settings = _settings(seaweed, tmp_path, secondary=str(second),
                         replication_retry={"initial_seconds": 0.01, "max_seconds": 0.01})
    with running_scp(tmp_path, archive=settings) as scp:
        assert send(scp.port, [ct(corpus, generate_uid()) for _ in range(2)]) == [0, 0]
        replicate_until_sent(scp, archive_from_config(scp.config))
        for row in scp.instances():
            body = seaweed.client().get_object(Bucket="radbridge", Key=f"pacs/{row.path}")["Body"].read()  # type: ignore
            assert (second / row.path).read_bytes() == body
            assert copies(scp)[row.id].secondary_state == "VERIFIED"
