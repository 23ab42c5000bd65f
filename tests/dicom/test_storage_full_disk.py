"""A full storage location: 0xA700, no partial file anywhere, and the association carries on.

The primary location is a 2 MB tmpfs (needs root to mount; skipped otherwise).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.conftest import need
from tests.dicom.store_peer import running_scp


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    need(done.returncode == 0, f"cannot mount a tmpfs: {done.stderr!r}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)  # lazy: even if a failed test left a file open


def _ct(corpus: Path, pixel_bytes: int) -> Dataset:
    ds = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixel_bytes // 2048, 1024
    ds.PixelData = os.urandom(pixel_bytes)
    return ds


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _send_until_full(assoc: Any, corpus: Path, sizes: list[int]) -> None:
    """All but the last of ``sizes`` fit on the disk and are stored; the last does not: 0xA700."""
    for size in sizes[:-1]:
        assert int(assoc.send_c_store(_ct(corpus, size)).Status) == 0x0000
    assert int(assoc.send_c_store(_ct(corpus, sizes[-1])).Status) == 0xA700


@pytest.mark.parametrize(
    "sizes",
    # larger than the disk (the spool fills it); fits once, not twice (the second instance's spool fails, as the
    # copy of one did before the streamed receive wrote the archive file in place: a fitting instance is stored)
    [[3 << 20], [1200 << 10, 1200 << 10]],
    ids=["spool-fills-the-disk", "second-instance-fills-the-disk"],
)
def test_full_location_answers_out_of_resources_and_leaves_nothing(
    tmp_path: Path, corpus: Path, small_disk: Path, sizes: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="channels.dicom.storage")
    with running_scp(tmp_path / "rb", archive={"primary": str(small_disk), "min_free_bytes": 0}) as scp:
        ae = AE(ae_title="CT1")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="RADBRIDGE")
        assert assoc.is_established
        try:
            _send_until_full(assoc, corpus, sizes)
            stored = {row.path for row in scp.instances()}
            assert len(stored) == len(sizes) - 1 and scp.quarantined() == []
            assert {str(p.relative_to(small_disk)) for p in _files(small_disk)} == stored  # no partial, no temporary
            for row in scp.instances():
                (small_disk / row.path).unlink()  # room again
            small = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
            assert int(assoc.send_c_store(small).Status) == 0x0000  # same association
        finally:
            assoc.release()
        row = scp.instances()[-1]
        assert row.sop_instance_uid == small.SOPInstanceUID and (small_disk / row.path).is_file()
    # It said "the spool write failed: ENOSPC": which disk was for the operator to guess (new-user campaign).
    failed = [r.getMessage() for r in caplog.records if "spool write failed" in r.getMessage()]
    assert failed and all(line.endswith(f"ENOSPC (No space left on device) in {small_disk / '.incoming'}")
                          for line in failed), caplog.text


def test_full_primary_with_a_secondary_owes_no_copy_until_a_store_succeeds(
    tmp_path: Path, corpus: Path, small_disk: Path
) -> None:
    from tests.archive.replica_peer import copy_rows, replicate

    second = tmp_path / "second"
    with running_scp(tmp_path / "rb", archive={"primary": str(small_disk), "secondary": str(second),
                                                        "min_free_bytes": 0}) as scp:
        ae = AE(ae_title="CT1")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="RADBRIDGE")
        assert assoc.is_established
        try:
            stored = 0  # the streamed spool may take the first large instance; one fills the disk
            while int(assoc.send_c_store(_ct(corpus, 1200 << 10)).Status) == 0x0000:
                stored += 1
                assert stored < 10, "the small disk never filled"
            assert len(scp.instances()) == stored and len(copy_rows(scp)) == stored
            before = {r.sop_instance_uid for r in scp.instances()}
            small = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
            assert int(assoc.send_c_store(small).Status) == 0x0000
        finally:
            assoc.release()
        (row,) = [r for r in scp.instances() if r.sop_instance_uid not in before]
        assert sorted(r.ordering_key for r in copy_rows(scp)) == sorted([*before, row.sop_instance_uid])
        from engine.archive.archive import archive_from_config

        archive = archive_from_config(scp.config)
        archive.secondary.check()  # type: ignore[union-attr]
        assert replicate(scp, archive) == stored + 1  # exactly the copies owed by the stores that succeeded
        assert (second / row.path).read_bytes() == (small_disk / row.path).read_bytes()
