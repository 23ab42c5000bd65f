"""The storage location interface: where archived files live, whatever holds them.

A location stores named objects (``<Study>/<Series>/<SOP>.dcm``, the index's
``path``) and offers exactly: :meth:`~Location.put`, :meth:`~Location.open`,
:meth:`~Location.stat`, :meth:`~Location.delete`, :meth:`~Location.iterate`
and :meth:`~Location.check`. Two kinds implement it:
:class:`engine.archive.fs_location.FileLocation` (a local or mounted directory)
and :class:`engine.archive.s3_location.S3Location` (an S3-compatible object
store). Every failure of the store itself is an
:class:`~engine.errors.ArchiveUnavailable`; an object that is not there is a
:class:`~engine.errors.CopyMissing`.

:func:`fixity` reads a stored Part 10 file once and returns its checksums: the
SHA-256 of the File Meta Information and the SHA-256 of the dataset after it
(the value the index records at ingest), so a flipped byte anywhere in the file
is seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from engine.archive.part10 import dataset_offset
from engine.errors import MalformedDataset

__all__ = ["CHUNK", "Fixity", "Location", "ObjectStat", "fixity", "read_head"]

CHUNK = 1 << 20
_META_PROBE = 1 << 16


@dataclass(frozen=True, slots=True)
class ObjectStat:
    """What a location says about one stored object without reading it."""

    size: int


@dataclass(frozen=True, slots=True)
class Fixity:
    """Checksums of one stored Part 10 file: its File Meta Information and its dataset."""

    meta_sha256: str
    sha256: str
    size: int  # of the dataset, as the index records it


class Location(Protocol):
    """One storage location; ``name`` is how the index and the logs refer to it."""

    name: str

    def describe(self) -> str:
        """Where it is (a path, ``s3://bucket/prefix``); no secrets."""
        ...

    def check(self) -> None:
        """Raise :class:`~engine.errors.ArchiveUnavailable` unless the location can be written now."""
        ...

    def put(self, key: str, body: BinaryIO, *, head: bytes = b"", replace: bool = True) -> bool:
        """Store ``head`` then ``body`` (streamed) as ``key``, durably, all or nothing.

        With ``replace`` an existing object is replaced atomically; without it an
        existing object is left as it is and False is returned. True when stored.
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """A reader of ``key``'s bytes (the caller closes it); :class:`CopyMissing` if absent."""
        ...

    def stat(self, key: str) -> ObjectStat | None:
        """Its size, or None when there is no such object."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; removing what is not there is not an error."""
        ...

    def iterate(self, prefix: str = "") -> Iterator[str]:
        """Every stored key under ``prefix`` (temporary and quarantine objects excluded)."""
        ...


def read_head(reader: BinaryIO) -> bytes:
    """Up to the first 64 KiB of ``reader`` (enough for any File Meta Information), short only at the end."""
    head = b""
    while len(head) < _META_PROBE and (chunk := reader.read(_META_PROBE - len(head))):
        head += chunk
    return head


def fixity(location: Location, key: str) -> Fixity:
    """Read ``key`` once and return its checksums.

    Raises :class:`CopyMissing` when it is absent, :class:`MalformedDataset` when it is not
    a Part 10 file with a File Meta group length (a damaged head), and
    :class:`~engine.errors.ArchiveUnavailable` when the location cannot be read.
    """
    with location.open(key) as reader:
        head = read_head(reader)
        offset = dataset_offset(head)
        if offset > len(head):
            raise MalformedDataset("File Meta Information longer than the file")
        meta = hashlib.sha256(head[:offset])
        body = hashlib.sha256(head[offset:])
        size = len(head) - offset
        while chunk := reader.read(CHUNK):
            body.update(chunk)
            size += len(chunk)
    return Fixity(meta.hexdigest(), body.hexdigest(), size)
