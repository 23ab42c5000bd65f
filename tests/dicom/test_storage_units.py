"""Pure parts of the storage SCP: which header is refused and why; the spool that survives a full disk."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from channels.dicom.spool import SpoolFile, spool_failure
from channels.dicom.storage import ERROR_COMMENTS, REFUSALS, STORAGE_SOP_CLASSES, StoreRequest, refusal
from engine.domain.instances import InstanceAttributes

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
