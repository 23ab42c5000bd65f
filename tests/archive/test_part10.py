"""File Meta Information for a received dataset, and finding where a file's dataset starts."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread

from engine.archive.part10 import IMPLEMENTATION_CLASS_UID, dataset_offset, encode_file_meta
from engine.errors import MalformedDataset

DATASET = b"\x08\x00\x18\x00UI\x06\x001.2.3\x00"


def test_encoded_meta_plus_dataset_is_a_part10_file_naming_the_sender() -> None:
    head = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1", "CT1")
    ds = dcmread(BytesIO(head + DATASET))
    meta = ds.file_meta
    assert (meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID) == ("1.2.3", "1.2.840.10008.1.2.1")
    assert (meta.ImplementationClassUID, meta.SourceApplicationEntityTitle) == (IMPLEMENTATION_CLASS_UID, "CT1")
    assert ds.SOPInstanceUID == "1.2.3"


def test_dataset_offset_is_the_end_of_the_meta_group() -> None:
    head = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2", "")
    assert dataset_offset(head + DATASET) == len(head)


NO_GROUP_LENGTH = b"\0" * 128 + b"DICM" + b"\x02\x00\x01\x00OB" + b"\0" * 8


@pytest.mark.parametrize("head", [b"", b"\0" * 128 + b"DICN" + b"\0" * 20, NO_GROUP_LENGTH])
def test_not_a_part10_file_with_group_length_is_malformed(head: bytes) -> None:
    with pytest.raises(MalformedDataset):
        dataset_offset(head)


def _pydicom_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID

    from engine.archive.part10 import IMPLEMENTATION_VERSION_NAME

    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae[:16]
    out = BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize(
    ("sop_instance", "transfer_syntax", "source_ae"),
    [
        ("1.2.3", "1.2.840.10008.1.2.1", "CT1"),  # odd UID, odd AE
        ("1.2.34", "1.2.840.10008.1.2", "MODALITY"),  # even UID, even AE
        ("1.2.3", "1.2.840.10008.1.2.4.50", ""),  # no source AE
        ("1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20.21.22", "1.2.840.10008.1.2.5", "A_VERY_LONG_AE_TITLE"),
    ],
)
def test_meta_is_byte_for_byte_what_pydicom_writes(sop_instance: str, transfer_syntax: str, source_ae: str) -> None:
    args = ("1.2.840.10008.5.1.4.1.1.2", sop_instance, transfer_syntax, source_ae)
    assert encode_file_meta(*args) == _pydicom_meta(*args)
