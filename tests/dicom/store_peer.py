"""Helpers for C-STORE tests: a running storage SCP, DCMTK storescu, raw sends, stored-file checks."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from sqlalchemy import select

from channels.dicom.server import DicomServer, start_dicom_server
from engine.archive.part10 import dataset_offset, encode_file_meta
from engine.config.models import EngineConfig
from engine.domain.instance_tables import instances, quarantined_instances
from engine.store.database import Database
from tests.dicom.conftest import dcmtk_env, make_config


@dataclass
class StoreSCP:
    """radbridge's DICOM AE with storage, over a fresh database."""

    db: Database
    config: EngineConfig
    server: DicomServer

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def archive(self) -> Path:
        return self.config.archive_dir()

    def instances(self) -> list[Any]:
        return self.db.read(lambda c: c.execute(select(instances).order_by(instances.c.id)).all())

    def quarantined(self) -> list[Any]:
        q = quarantined_instances
        return self.db.read(lambda c: c.execute(select(q).order_by(q.c.id)).all())

    def stored_path(self, sop_instance_uid: str) -> Path:
        row = next(r for r in self.instances() if r.sop_instance_uid == sop_instance_uid)
        return self.archive / row.path


@contextmanager
def running_scp(tmp_path: Path, db_url: str | None = None, **sections: Any) -> Iterator[StoreSCP]:
    config = make_config(tmp_path, **sections)
    db = Database(db_url or f"sqlite:///{tmp_path / 'rb.db'}", sqlite_synchronous="NORMAL")
    db.migrate()
    server = start_dicom_server(config, db)
    try:
        yield StoreSCP(db, config, server)
    finally:
        server.stop()
        db.close()


def storescu(port: int, paths: list[Path], *options: str, aet: str = "CT1") -> subprocess.CompletedProcess[str]:
    """DCMTK storescu (TCP_NODELAY=1), halting on the first failed store unless told otherwise."""
    args = ["storescu", "-aet", aet, "-aec", "RADBRIDGE", *options, "127.0.0.1", str(port), *map(str, paths)]
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=300)


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's dataset bytes (after its File Meta Information)."""
    data = path.read_bytes()
    return data[dataset_offset(data[:1 << 16]):]


def raw_file(dataset: bytes, sop_class: str, sop_instance: str, transfer_syntax: str, out: Path) -> Path:
    """A Part 10 file around ``dataset`` as given, so pynetdicom can send it without decoding it."""
    out.write_bytes(encode_file_meta(sop_class, sop_instance, transfer_syntax, "TEST") + dataset)
    return out


@contextmanager
def raw_sender(port: int, contexts: list[tuple[str, str]], aet: str = "CT1") -> Iterator[Any]:
    """An association that sends files as they are (STORE_SEND_CHUNKED_DATASET), released at the end."""
    ae = AE(ae_title=aet)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        if assoc.is_established:
            assoc.release()


def send_raw(assoc: Any, path: Path) -> int:
    """Send one file raw; the status (-1 when the association ended without one)."""
    rsp = assoc.send_c_store(path)
    return int(rsp.Status) if "Status" in rsp else -1


def pixel_data(path: Path) -> bytes:
    ds: Dataset = dcmread(path)
    return bytes(ds.PixelData)


def store_one(port: int, ds: Dataset, aet: str = "CT1") -> int:
    """C-STORE ``ds`` (whatever SOP class and transfer syntax it has) on a new pynetdicom association; its status."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def drain_unsolicited(assoc: Any, seconds: float = 10) -> None:
    """Wait until pynetdicom's reactor has dropped the responses to hand-made requests (sent raw on the
    socket): still on its queue, the next ``send_c_store`` would take one for its own (seen under load)."""
    deadline = time.monotonic() + seconds
    while not assoc.dimse.msg_queue.empty() and time.monotonic() < deadline:
        time.sleep(0.01)


@contextmanager
def associated(port: int, *contexts: str, transfer_syntax: str = ExplicitVRLittleEndian) -> Iterator[Any]:
    """An association of pynetdicom as CT1 with ``contexts`` in ``transfer_syntax``, released at the end."""
    ae = AE(ae_title="CT1")
    for sop_class in contexts:
        ae.add_requested_context(sop_class, transfer_syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def corpus_images(corpus: Path, tmp_path: Path, *changes: dict[str, object]) -> list[Path]:
    """The corpus MR study's first images, the n-th with ``changes[n]`` set (a None value deletes), written out."""
    sources = sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm"))
    paths = []
    for n, change in enumerate(changes):
        ds: Dataset = dcmread(sources[n])
        for keyword, value in change.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        paths.append(tmp_path / f"image{n}.dcm")
        ds.save_as(paths[-1])
    return paths
