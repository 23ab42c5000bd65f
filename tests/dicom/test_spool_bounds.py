"""Spool bounds of the C-STORE receive against real peers (pynetdicom writing PDUs by hand, DCMTK storescu).

An adversarial campaign found the spool unbounded: a C-STORE whose data set never ends, or one
host sending many huge instances at once, filled the disk, and then every modality got 0xA700.
Now a data set past ``dicom.max_instance_bytes`` is aborted, one host's data sets in flight take
at most ``dicom.max_spool_bytes_per_host`` (its next store is 0xA700, other hosts store), and
under ``archive.min_free_bytes`` free a new store is 0xA700 before anything is written.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from engine.archive.spool_budget import free_bytes
from tests.dicom.conftest import needs_dcmtk
from tests.dicom.store_peer import StoreSCP, running_scp, storescu
from tests.dicom.test_store_stream import _pdu, _sent_dataset, _store_command

pytestmark = pytest.mark.timeout(180)

CT = "1.2.840.10008.5.1.4.1.1.2"
MIB = 1 << 20
OTHER_HOST = "127.0.0.2"
#: Small bounds so that tests move megabytes, not gigabytes: 8 MiB instances, 12 MiB per host.
BOUNDS = {"max_instance_bytes": 8 * MIB, "max_spool_bytes_per_host": 12 * MIB}


def ct(corpus: Path, pixel_bytes: int) -> Dataset:
    """A CT instance of about ``pixel_bytes`` (random pixel data), new UIDs."""
    ds = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixel_bytes // 2048, 1024
    ds.PixelData = os.urandom(pixel_bytes)
    return ds


def associate(port: int, host: str = "127.0.0.1") -> Any:
    """pynetdicom as CT1 from ``host`` (a loopback address: another calling host)."""
    ae = AE(ae_title="CT1")
    ae.acse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE", bind_address=(host, 0))
    assert assoc.is_established
    return assoc


def send_part(assoc: Any, sop_instance: str, data: bytes, last: bool = False) -> None:
    """A C-STORE-RQ command (when ``sop_instance``) and ``data`` as 1 MiB fragments, written on the socket."""
    cx = sorted(assoc._accepted_cx)[0]
    sock = assoc.dul.socket.socket
    if sop_instance:
        sock.sendall(_pdu((cx, 0x03, _store_command(1, sop_instance))))
    for start in range(0, len(data), MIB):
        end = start + MIB >= len(data)
        sock.sendall(_pdu((cx, 0x02 if last and end else 0x00, data[start : start + MIB])))


def spooled(incoming: Path) -> list[Path]:
    return list(incoming.glob("rx-*"))


def wait_for(check: Any, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(check())


def store(port: int, ds: Dataset, host: str = "127.0.0.1") -> int:
    assoc = associate(port, host)
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


@contextmanager
def bounded_scp(tmp_path: Path, **archive: Any) -> Iterator[StoreSCP]:
    with running_scp(tmp_path / "rb", dicom={"port": 0, "ae_title": "RADBRIDGE", **BOUNDS},
                     archive=archive) as scp:  # fmt: skip
        yield scp


def test_a_data_set_that_never_ends_is_aborted_at_the_limit_and_leaves_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, corpus: Path) -> None:
    caplog.set_level(logging.INFO, logger="channels.dicom.store_stream")
    with bounded_scp(tmp_path) as scp:
        assoc = associate(scp.port)
        with pytest.raises(OSError):  # the association is aborted under the sender
            send_part(assoc, generate_uid(), os.urandom(MIB) * 64)
        assert wait_for(lambda: not assoc.is_established) and assoc.is_aborted
        assert wait_for(lambda: spooled(scp.archive / ".incoming") == [])
        assert scp.instances() == [] and scp.quarantined() == []
        lines = [r for r in caplog.records if "max_instance_bytes" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING
        assert "passed 8388608 bytes" in lines[0].getMessage()
        assert store(scp.port, ct(corpus, 6 * MIB)) == 0x0000  # an instance under the limit still is stored


def _one_host_holds_its_share(scp: Any, held: Any, data: bytes, corpus: Path) -> Path:
    """OTHER_HOST holds 6 MiB of ``held`` in flight: its next store is 0xA700, another host's succeeds; once
    ``held`` ends (stored, its bytes given back) OTHER_HOST stores again. Returns the spool directory."""
    incoming: Path = scp.archive / ".incoming"
    hog = associate(scp.port, OTHER_HOST)
    send_part(hog, held.SOPInstanceUID, data[: 6 * MIB])
    assert wait_for(lambda: sum(p.stat().st_size for p in spooled(incoming)) >= 6 * MIB)
    assert store(scp.port, ct(corpus, 6 * MIB), OTHER_HOST) == 0xA700  # the same host: its share is taken
    assert store(scp.port, ct(corpus, 6 * MIB)) == 0x0000  # another host stores
    send_part(hog, "", data[6 * MIB :], last=True)  # the held instance ends: stored, its bytes given back
    assert wait_for(lambda: held.SOPInstanceUID in {r.sop_instance_uid for r in scp.instances()})
    hog.release()
    assert store(scp.port, ct(corpus, 6 * MIB), OTHER_HOST) == 0x0000
    return incoming


def test_one_host_cannot_take_the_whole_spool_and_others_still_store(tmp_path: Path, corpus: Path) -> None:
    held = ct(corpus, 7 * MIB)
    data = _sent_dataset(held, tmp_path)
    with bounded_scp(tmp_path) as scp:
        incoming = _one_host_holds_its_share(scp, held, data, corpus)  # 8 MiB of the host's 12 taken
        assert len(scp.instances()) == 3 and scp.quarantined() == []
        assert spooled(incoming) == []


@needs_dcmtk
def test_under_the_free_space_reserve_a_store_is_refused_before_it_writes(
        tmp_path: Path, corpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="channels.dicom.store_stream")
    reserve = free_bytes(tmp_path) + (1 << 40)  # a terabyte more than this disk has free
    with bounded_scp(tmp_path, min_free_bytes=reserve) as scp:
        files = []
        for n in range(2):
            path = tmp_path / f"ct{n}.dcm"
            ct(corpus, MIB).save_as(path, enforce_file_format=True)
            files.append(path)
        sent = storescu(scp.port, files, "--no-halt", "-v")
        assert sent.stderr.count("Refused: OutOfResources") == 2, sent.stderr
        assert scp.instances() == [] and scp.quarantined() == []
        assert spooled(scp.archive / ".incoming") == []
        lines = [r for r in caplog.records if "min_free_bytes" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING  # once, not once per store
        # which file system, what it has and what it keeps: "less than archive.min_free_bytes free" alone sent
        # the operator looking for the spool (new-user campaign)
        text = lines[0].getMessage()
        assert f"({scp.archive / '.incoming'}) has " in text and " MiB free, less than archive.min_free_bytes (" in text
        assert "every new image is refused (0xA700)" in text


@contextmanager
def pynetdicoms_own_receive() -> Iterator[None]:
    """pynetdicom logging at INFO: the streamed receive is not installed (store_stream.install_store_stream)."""
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(level)


def test_pynetdicoms_own_receive_path_keeps_the_instance_limit_and_the_reserve(
        tmp_path: Path, corpus: Path) -> None:
    with pynetdicoms_own_receive(), bounded_scp(tmp_path) as scp:
        assert store(scp.port, ct(corpus, 10 * MIB)) == 0xA700  # past max_instance_bytes: spooled to nothing
        assert store(scp.port, ct(corpus, 2 * MIB)) == 0x0000
        assert len(scp.instances()) == 1 and spooled(scp.archive / ".incoming") == []
    reserve = free_bytes(tmp_path) + (1 << 40)
    with pynetdicoms_own_receive(), bounded_scp(tmp_path / "full", min_free_bytes=reserve) as scp:
        assert store(scp.port, ct(corpus, MIB)) == 0xA700
        assert scp.instances() == [] and spooled(scp.archive / ".incoming") == []


def test_a_data_set_arriving_for_longer_than_the_idle_timeout_is_stored(tmp_path: Path, corpus: Path) -> None:
    """PDUs keep coming: the association is not idle. pynetdicom restarted its idle timer only between whole
    data sets, so the association was aborted mid-data-set (after the instance was stored, before its answer)."""
    ds = ct(corpus, 6 * MIB)
    data = _sent_dataset(ds, tmp_path)
    with running_scp(tmp_path / "rb", dicom={"port": 0, "ae_title": "RADBRIDGE", "idle_timeout_seconds": 1}) as scp:
        assoc = associate(scp.port)
        send_part(assoc, ds.SOPInstanceUID, data[:MIB])
        for start in range(MIB, len(data), MIB):
            time.sleep(0.4)  # 3 s in all, a PDU every 0.4 s
            send_part(assoc, "", data[start : start + MIB], last=start + MIB >= len(data))
        assert wait_for(lambda: ds.SOPInstanceUID in {r.sop_instance_uid for r in scp.instances()})
        time.sleep(0.5)
        assert assoc.is_established and not assoc.is_aborted
        assoc.release()


def test_pynetdicoms_own_receive_path_keeps_the_per_host_share(tmp_path: Path, corpus: Path) -> None:
    """pynetdicom's own receive (while it logs at INFO) bounded the instance and the free space, not one host's
    share: a host could have any number of data sets in flight there. Now its spool files take their bytes from
    the same per-host ledger (found from the DUL thread's association), given back when pynetdicom closes them."""
    held = ct(corpus, 7 * MIB)
    data = _sent_dataset(held, tmp_path)
    with pynetdicoms_own_receive(), bounded_scp(tmp_path) as scp:
        incoming = _one_host_holds_its_share(scp, held, data, corpus)  # 10 MiB of the host's 12 taken
        assert len(scp.instances()) == 3
        assert wait_for(lambda: spooled(incoming) == [])
