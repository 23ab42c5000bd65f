"""Helpers for archive tests: a storage SCP with a secondary location, instances to send, a replication round."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select

from engine.archive.archive import Archive, archive_from_config
from engine.archive.copy_tables import instance_copies
from engine.archive.replication import DESTINATION
from engine.archive.service import replication_routes
from engine.config.models import OutboxConfig
from engine.outbox.worker import OutboxWorker
from engine.store.schema import outbox
from tests.dicom.store_peer import StoreSCP, running_scp

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: Retry at once: the tests bring the secondary back and expect the next round to copy.
FAST_RETRY = {"initial_seconds": 0.01, "max_seconds": 0.01, "max_attempts": 1000}


def ct(corpus: Path, study_uid: str) -> Dataset:
    """CT_small with a fresh SOP Instance UID, in ``study_uid`` and a series of that study's own (one series
    is never filed under two studies: radbridge refuses the image, 0xC240)."""
    ds = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series of", study_uid])
    return ds


def send(port: int, datasets: list[Dataset]) -> list[int]:
    """C-STORE each dataset on one association; the statuses."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(CT, EXPLICIT_LE)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


@contextmanager
def scp_with_secondary(tmp_path: Path, secondary: str, db_url: str | None = None,
                       **archive: Any) -> Iterator[tuple[StoreSCP, Archive]]:
    """The storage SCP with ``archive.secondary`` set, and the archive the engine would build."""
    settings = {"secondary": secondary, "replication_retry": FAST_RETRY, **archive}
    with running_scp(tmp_path, db_url, archive=settings) as scp:
        yield scp, archive_from_config(scp.config)


def replicate(scp: StoreSCP, archive: Archive) -> int:
    """One outbox round of the copies to the secondary; how many were attempted."""
    routes = replication_routes(scp.config.archive, archive, scp.db)
    worker = OutboxWorker(scp.db, routes, OutboxConfig())
    return asyncio.run(worker.run_round(DESTINATION))


def replicate_until_sent(scp: StoreSCP, archive: Archive, rounds: int = 20) -> None:
    """Rounds (as the worker's poll would run them) until every copy row is SENT, or ``rounds`` ran."""
    for _ in range(rounds):
        replicate(scp, archive)
        if {r.status for r in copy_rows(scp)} == {"SENT"}:
            return
        time.sleep(0.05)


def copies(scp: StoreSCP) -> dict[int, Any]:
    rows = scp.db.read(lambda c: c.execute(select(instance_copies)).all())
    return {int(r.instance_pk): r for r in rows}


def copy_rows(scp: StoreSCP) -> list[Any]:
    """The outbox rows of copies to the secondary, by id."""
    query = select(outbox).where(outbox.c.destination == DESTINATION).order_by(outbox.c.id)
    return scp.db.read(lambda c: c.execute(query).all())
