"""DICOM Part 10 framing (PS3.10 7.1): preamble, ``DICM`` and the File Meta Information.

The dataset that follows the File Meta Information is never decoded here: a
stored file is the meta this module encodes followed by the dataset bytes
exactly as received on the wire.
"""

from __future__ import annotations

import struct

from engine.errors import MalformedDataset

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "PADDING_CREATOR_UID", "ROOMY_META_BYTES",
           "as_written", "dataset_offset", "encode_file_meta", "min_padding", "pad_file_meta", "with_room"]

#: radbridge's Implementation Class UID (a UUID-derived UID under 2.25, PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.204587617513361960318215003916339741337"
IMPLEMENTATION_VERSION_NAME = "RADBRIDGE_1"

#: (0002,0100) Private Information Creator UID of the padding :func:`pad_file_meta` adds.
PADDING_CREATOR_UID = IMPLEMENTATION_CLASS_UID + ".1"

#: What :func:`with_room` pads a File Meta Information to a multiple of: one file-system block, so the
#: data set after it starts on a block boundary.
ROOMY_META_BYTES = 4096

_PREAMBLE = b"\x00" * 128 + b"DICM"
#: (0002,0000) UL, explicit VR little endian: tag, "UL", length 4.
_GROUP_LENGTH_HEADER = b"\x02\x00\x00\x00UL\x04\x00"


def _element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    """One group 0002 element, explicit VR little endian (PS3.5 7.1.2), padded to even length."""
    if len(value) % 2:
        value += pad
    if vr == b"OB":
        return struct.pack("<HH2sHI", 2, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                     source_ae_title: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group for one received instance.

    ``source_ae_title`` (the calling AE, PS3.10 7.1 Source Application Entity Title)
    records where the instance came from. Encoded directly, byte for byte as pydicom's
    ``write_file_meta_info`` would (a test compares them): it runs once per received
    instance, where pydicom's element machinery costs ~0.2 ms.
    """
    def ui(value: str) -> bytes:
        return value.encode("ascii", "replace")

    body = b"".join((
        _element(0x0001, b"OB", b"\x00\x01", b"\0"),
        _element(0x0002, b"UI", ui(sop_class_uid), b"\0"),
        _element(0x0003, b"UI", ui(sop_instance_uid), b"\0"),
        _element(0x0010, b"UI", ui(transfer_syntax_uid), b"\0"),
        _element(0x0012, b"UI", ui(IMPLEMENTATION_CLASS_UID), b"\0"),
        _element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" "),
        _element(0x0016, b"AE", source_ae_title[:16].encode("ascii", "replace"), b" ") if source_ae_title else b"",
    ))  # fmt: skip
    return _PREAMBLE + _GROUP_LENGTH_HEADER + struct.pack("<I", len(body)) + body


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


def _padding_elements(size: int) -> bytes:
    """(0002,0100) with :data:`PADDING_CREATOR_UID` and (0002,0102) Private Information of zeros,
    ``size`` bytes together (``size`` >= :func:`min_padding`, even)."""
    creator = _creator()
    zeros = size - len(creator) - 12
    if zeros < 0 or zeros % 2:
        raise ValueError(f"no padding of {size} bytes")
    return creator + struct.pack("<HH2sHI", 2, 0x0102, b"OB", 0, zeros) + b"\0" * zeros


def _creator() -> bytes:
    return _element(0x0100, b"UI", PADDING_CREATOR_UID.encode("ascii"), b"\0")


def min_padding() -> int:
    """The fewest bytes :func:`pad_file_meta` can add (the two elements, no zeros)."""
    return len(_creator()) + 12


def pad_file_meta(meta: bytes, length: int) -> bytes:
    """``meta`` (from :func:`encode_file_meta`) made exactly ``length`` bytes long.

    The File Meta Information gains a Private Information Creator UID (0002,0100) and a
    Private Information (0002,0102) of zeros (PS3.10 7.1), its group length updated; the
    dataset that follows is not touched. Lets a file's head grow by whole file-system blocks
    (:mod:`engine.archive.rehead`). ``length - len(meta)`` must be 0 or at least
    :func:`min_padding`, and even.
    """
    if length == len(meta):
        return meta
    body = meta[144:] + _padding_elements(length - len(meta))
    return _PREAMBLE + _GROUP_LENGTH_HEADER + struct.pack("<I", len(body)) + body


def with_room(meta: bytes) -> bytes:
    """``meta`` padded (:func:`pad_file_meta`) to the next multiple of :data:`ROOMY_META_BYTES`.

    A receiver that writes this before a data set leaves room at the file's front: a header that a
    coercion makes up to that padding longer is written over the front in place
    (:func:`engine.archive.rehead.rewrite_front`), the data set's tail staying where it is.
    """
    return pad_file_meta(meta, -(-(len(meta) + min_padding()) // ROOMY_META_BYTES) * ROOMY_META_BYTES)


def as_written(meta: bytes, head: bytes, offset: int) -> bytes | None:
    """The File Meta Information ``head`` (a file's first bytes, its data set at ``offset``) starts with,
    when it is ``meta`` itself or ``meta`` padded by :func:`pad_file_meta`; None otherwise."""
    pad = offset - len(meta)
    if pad == 0:
        return meta if head.startswith(meta) else None
    if pad < min_padding() or pad % 2 or offset > len(head):
        return None
    padded = pad_file_meta(meta, offset)
    return padded if head.startswith(padded) else None
