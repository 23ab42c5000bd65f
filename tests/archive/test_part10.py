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
