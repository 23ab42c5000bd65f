"""DICOM Part 10 framing (PS3.10 7.1): preamble, ``DICM`` and the File Meta Information.

The dataset that follows the File Meta Information is never decoded here: a
stored file is the meta this module encodes followed by the dataset bytes
exactly as received on the wire.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from engine.errors import MalformedDataset

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "dataset_offset", "encode_file_meta"]

#: radbridge's Implementation Class UID (a UUID-derived UID under 2.25, PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.204587617513361960318215003916339741337"
IMPLEMENTATION_VERSION_NAME = "RADBRIDGE_1"

_PREAMBLE = b"\x00" * 128 + b"DICM"
#: (0002,0000) UL, explicit VR little endian: tag, "UL", length 4.
_GROUP_LENGTH_HEADER = b"\x02\x00\x00\x00UL\x04\x00"


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                     source_ae_title: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group for one received instance.

    ``source_ae_title`` (the calling AE, PS3.10 7.1 Source Application Entity Title)
    records where the instance came from.
    """
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae_title:
        meta.SourceApplicationEntityTitle = source_ae_title[:16]
    out = BytesIO()
    out.write(_PREAMBLE)
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue()


def dataset_offset(head: bytes) -> int:
    """Where the dataset starts in a Part 10 file whose first bytes are ``head``.

    ``head`` must hold at least the preamble, ``DICM`` and the (0002,0000) group length
    element (144 bytes). Raises :class:`MalformedDataset` when it does not look like
    a Part 10 file with a group length.
    """
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:140] != _GROUP_LENGTH_HEADER:
        raise MalformedDataset("not a DICOM Part 10 file with a File Meta group length")
    (length,) = struct.unpack_from("<I", head, 140)
    return 144 + int(length)
