"""Pure parts of the storage SCP: which header is refused and why; the spool that survives a full disk."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from channels.dicom import storage as storage_module
from channels.dicom.spool import SpoolFile, spool_failure
from channels.dicom.storage import (
    ERROR_COMMENTS,
    REFUSALS,
    STORAGE_SOP_CLASSES,
    StorageService,
    StoreRequest,
    refusal,
)
from engine.domain.instance_tables import quarantined_instances
from engine.domain.instances import InstanceAttributes
from engine.store.database import Database
from tests.dicom.conftest import make_config

CT = "1.2.840.10008.5.1.4.1.1.2"
REQUEST = StoreRequest(Path("/nonexistent"), CT, "1.2.3.4", CT, "1.2.840.10008.1.2.1", "CT1")
GOOD = InstanceAttributes(CT, "1.2.3.4", "1.2.3", "1.2.3.1")


@pytest.mark.parametrize(
    ("attrs", "request_", "key"),
    [
        (GOOD, REQUEST, None),
        (replace(GOOD, sop_instance_uid=""), REQUEST, "missing_uid"),
        (replace(GOOD, study_instance_uid="1.2.x"), REQUEST, "missing_uid"),
        (replace(GOOD, series_instance_uid=""), REQUEST, "missing_uid"),
        (replace(GOOD, sop_instance_uid="1.2.3.5"), REQUEST, "instance_mismatch"),
        (replace(GOOD, sop_class_uid="1.2.840.10008.5.1.4.1.1.4"), REQUEST, "class_mismatch"),
        (GOOD, replace(REQUEST, abstract_syntax="1.2.840.10008.5.1.4.1.1.4"), "class_mismatch"),
    ],
)
def test_refusal(attrs: InstanceAttributes, request_: StoreRequest, key: str | None) -> None:
    assert refusal(attrs, request_) == key


def test_refusal_statuses_are_failures_of_ps3_4_b_2_3() -> None:
    assert {status for status, _ in REFUSALS.values()} == {0xC210, 0xC211, 0xC220, 0xC221, 0xA900, 0xC230, 0xC240}
    assert set(ERROR_COMMENTS) == set(REFUSALS) and all(len(c) <= 64 for c in ERROR_COMMENTS.values())


def test_retired_storage_classes_are_accepted_and_print_classes_are_not() -> None:
    assert "1.2.840.10008.5.1.4.1.1.6" in STORAGE_SOP_CLASSES  # Ultrasound Image Storage (Retired)
    assert "1.2.840.10008.5.1.4.1.1.88.3" in STORAGE_SOP_CLASSES  # Detail SR Storage - Trial
    assert "1.2.840.10008.5.1.1.27" not in STORAGE_SOP_CLASSES  # Stored Print Storage
    assert len(STORAGE_SOP_CLASSES) == len(set(STORAGE_SOP_CLASSES))


class _FullDisk:
    def write(self, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        pass


def test_spool_records_a_failed_write_instead_of_raising(tmp_path: Path) -> None:
    spool = SpoolFile(tmp_path)
    spool._out = _FullDisk()  # type: ignore[assignment]
    assert spool.write(b"abc") == 3
    spool.file.flush()
    spool.close()
    failed = spool_failure(Path(spool.name))
    assert failed is not None and failed.errno == 28
    assert spool_failure(Path(spool.name)) is None  # forgotten once asked


def test_a_race_refused_image_whose_content_name_was_taken_is_kept_and_that_file_left(tmp_path: Path) -> None:
    """Refused after place() found both names taken (the same content already under its content-hash name): the
    spool is gone, so what is kept is that file, which may be another index row's and stays where it is."""
    config = make_config(tmp_path)
    db = Database(f"sqlite:///{tmp_path / 'rb.db'}")
    db.migrate()
    try:
        service = StorageService.from_config(db, config)
        service.prepare()
        name = "1.2.3/1.2.3.4/1.2.3.4.5.0123456789abcdef.dcm"
        placed = service.primary.path(name)
        placed.parent.mkdir(parents=True)
        placed.write_bytes(b"the same content, already there")
        request = StoreRequest(tmp_path / "spool-gone.dcm", CT, "1.2.3.4.5", CT, "1.2.840.10008.1.2.1", "CT1")
        refused = storage_module._Refused("series_conflict", "raced", placed=name, owned=False)
        status, _ = service._quarantine(request, refused, datetime.now(UTC))
        rows = db.read(lambda c: c.execute(select(quarantined_instances)).all())
    finally:
        db.close()
    assert status == 0xC240 and placed.read_bytes() == b"the same content, already there"
    (row,) = rows
    assert (config.quarantine_dir() / row.path).read_bytes() == b"the same content, already there"
