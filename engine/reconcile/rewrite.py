"""A received Part 10 file with a coerced header: the header re-encoded, the rest streamed as is.

The dataset is split at the first top-level element of group 7FE0 (pixel data,
float pixel data) or beyond: everything before it (the attributes reconciliation
touches, and every text value the character set governs) is read with pydicom
and written back in the same transfer syntax; everything from the split on is
copied byte for byte, never decoded and never held in memory.

Writing the header back (:func:`encode_coerced`) re-encodes only the top-level
elements the coercion changed (and the OriginalAttributesSequence it appended
to), each exactly as pydicom encodes it, and copies every other element's bytes
as received. pydicom's whole-header encoding (:func:`encode_header`) differs only
where it would itself alter an element nobody changed: a value it had decoded is
re-encoded from the decoded value (padding normalised), a sequence it had parsed
gets its item lengths recomputed. Retired group lengths (gggg,0000) are dropped by
both, as they would be stale. A header whose SpecificCharacterSet changed has
every text element (and every sequence, whose items may hold text) re-encoded too;
its other elements are still copied as received, so that one pydicom cannot
decode (an FD of 6 bytes, an unknown VR) does not stop the header being written;
when the dataset has elements after its pixel data (a private group (7FE1,xxxx) with
text), the "header" is then the whole dataset (:func:`elements_after_bulk`), so that
their text is re-encoded too instead of being read in the new character set.

Deflated datasets (PS3.5 A.5) cannot be split: their bytes are compressed as a
whole. They are read and written whole instead (:func:`read_whole`,
:func:`encode_whole`); they are rare and small (deflate suits structured reports,
not images).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import mmap
import os
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

from pydicom import dcmread
from pydicom.charset import default_encoding
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.uid import UID

from engine.archive.location import FileTail
from engine.archive.part10 import dataset_offset
from engine.archive.structure import Encoding, offset_of_tag, top_level_elements
from engine.reconcile.coerce import Coercion, utf8_text
from engine.reconcile.encode import ElementWriter

__all__ = ["BULK_TAG", "CoercedHeader", "CoercedStream", "Header", "WholeStream",
           "element_spans", "elements_after_bulk", "encode_coerced", "encode_header", "encode_whole",
           "encoded_elements", "encoding_of", "read_header", "read_whole", "reencoded_tags", "splice",
           "without_meta_elements"]

log = logging.getLogger(__name__)

#: (7FE0,0000): the pixel data group and everything after it is bulk, copied as received.
BULK_TAG = 0x7FE00000
#: The largest dataset read whole to re-encode the elements after its pixel data (:func:`elements_after_bulk`).
WHOLE_LIMIT = 64 << 20
#: Data Set Trailing Padding (FFFC,FFFC), PS3.10 7.2: the one element after the pixel data that holds no text.
_TRAILING_PADDING = 0xFFFCFFFC
#: The VRs whose values SpecificCharacterSet governs (PS3.5 6.1.2.3), and sequences, whose items may hold them.
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN", "SQ"})
#: The explicit VRs with a 4-byte length after 2 reserved bytes (PS3.5 Table 7.1-1): their value starts at byte 12.
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


def encoding_of(transfer_syntax_uid: str) -> Encoding | None:
    """How a dataset in this transfer syntax is encoded; None for deflate (not splittable)."""
    ts = UID(transfer_syntax_uid)
    if ts.is_deflated:
        return None
    try:
        return Encoding(bool(ts.is_implicit_VR), bool(ts.is_little_endian))
    except ValueError:  # a transfer syntax pydicom does not know: encapsulated, explicit VR LE
        return Encoding(False, True)


@dataclass(frozen=True, slots=True)
class Header:
    """The header part of a dataset: its parsed form, its bytes as received and where the bulk starts."""

    dataset: Dataset
    raw: bytes
    bulk_at: int
    enc: Encoding
    #: The data set holds command or File Meta Information elements (groups 0000/0002) in ``raw``
    #: (:func:`~engine.archive.structure.check_structure` says so; :func:`without_meta_elements`).
    meta_elements: bool = False


def read_header(spool: BinaryIO, offset: int, enc: Encoding, whole: bool = False) -> Header:
    """Parse the header of the dataset that starts at ``offset`` of ``spool`` (structure already checked);
    with ``whole``, the whole dataset, pixel data included (:func:`elements_after_bulk`)."""
    with mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        bulk_at = len(buf) if whole else offset_of_tag(buf, offset, len(buf), enc, BULK_TAG)
        raw = bytes(buf[offset:bulk_at])
    ds = read_dataset(BytesIO(raw), enc.implicit, enc.little)
    return Header(ds, raw, bulk_at, enc)


def elements_after_bulk(spool: BinaryIO, header: Header) -> bool:
    """True when the dataset holds top-level elements after its pixel data group (other than trailing
    padding), such as a private group (7FE1,xxxx) with text or sequences, and the whole dataset is at
    most :data:`WHOLE_LIMIT` bytes. A character set change must re-encode their text too, so such a
    header is read :func:`whole <read_header>`: copied as received, they would be read in the new
    character set. A larger dataset (a multiframe of hundreds of MB) keeps them as received, with a
    warning: receiving and correcting it must not hold the pixel data in memory."""
    with mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        after = any(tag >> 16 != BULK_TAG >> 16 and tag != _TRAILING_PADDING
                    for tag, _, _ in top_level_elements(buf, header.bulk_at, len(buf), header.enc))
        if after and len(buf) - header.bulk_at > WHOLE_LIMIT:
            log.warning("the elements after the pixel data of a %d MB dataset are kept as received (not re-encoded"
                        " in the new character set): over the %d MB it may be read whole for",
                        len(buf) >> 20, WHOLE_LIMIT >> 20)
            return False
        return after


def encode_header(ds: Dataset, enc: Encoding) -> bytes:
    """``ds`` encoded in ``enc`` (the received transfer syntax), ready to precede the bulk."""
    out = DicomBytesIO()
    out.is_implicit_VR = enc.implicit
    out.is_little_endian = enc.little
    ds.set_original_encoding(enc.implicit, enc.little, ds.original_character_set)
    write_dataset(out, ds)
    return out.getvalue()


def _is_group_length(tag: int) -> bool:
    """A retired group length (PS3.5 7.2), which pydicom never writes either; or a command (0000) or File Meta
    Information (0002) element, which a data set must not hold (PS3.10 7.1): a sender that copied its file's
    meta into the data set would otherwise put a second, stale Transfer Syntax UID and Source AE Title in the
    stored file after radbridge's own (pydicom reads the last one)."""
    return (tag & 0xFFFF == 0 and tag >> 16 > 6) or tag >> 16 in (0x0000, 0x0002)


def without_meta_elements(header: Header) -> bytes | None:
    """``header.raw`` without the command and File Meta Information elements a sender put in its data set
    (:func:`_is_group_length`), wherever they are, every other element as received; None when it holds none
    (the usual case: :attr:`Header.meta_elements`, found by the structure check's walk, costs nothing more)."""
    if not header.meta_elements:
        return None
    return splice(header.raw, element_spans(header), {})


def element_spans(header: Header) -> list[tuple[int, int, int]]:
    """(tag, first byte, byte after its value) of each top-level element of ``header.raw``."""
    return list(top_level_elements(header.raw, 0, len(header.raw), header.enc))


def encoded_elements(header: Header, tags: frozenset[int]) -> dict[int, bytes]:
    """The elements ``tags`` names that ``header.dataset`` holds, encoded as pydicom encodes them
    (:class:`~engine.reconcile.encode.ElementWriter`, as :func:`encode_header` would)."""
    ds = header.dataset
    writer = ElementWriter(header.enc)
    charset = ds.get("SpecificCharacterSet", default_encoding)
    return {tag: writer.element(ds.get_item(tag), charset) for tag in sorted(tags) if tag in ds}


def splice(raw: bytes, spans: list[tuple[int, int, int]], replacements: dict[int, bytes]) -> bytes:
    """``raw`` (its top-level elements at ``spans``) with the element of each tag of ``replacements``
    replaced by (or, when absent, inserted in tag order as) its bytes; retired group lengths left out.

    Elements a sender wrote out of ascending tag order (PS3.5 7.1 requires it) are put in order, and a tag
    it wrote twice is replaced once: otherwise the replaced tag would be written twice, and a reader that
    keeps the last one (pydicom, hence the next coercion) would read the value as received.
    """
    pending = sorted(replacements)
    view = memoryview(raw)
    out: list[bytes | memoryview] = []
    if any(a[0] >= b[0] for a, b in itertools.pairwise(spans)):
        spans = sorted(spans, key=lambda span: span[0])  # stable: duplicates keep their order
    for tag, start, stop in spans:
        while pending and pending[0] < tag:
            out.append(replacements[pending.pop(0)])
        if pending and pending[0] == tag:
            out.append(replacements[pending.pop(0)])
        elif tag not in replacements and not _is_group_length(tag):
            out.append(view[start:stop])
    out.extend(replacements[tag] for tag in pending)
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class CoercedHeader:
    """A coerced header's bytes, and the re-encoded top-level elements spliced into them (None after a
    character set change: every text element was re-encoded, which is never remembered)."""

    head: bytes
    elements: dict[int, bytes] | None


def reencoded_tags(header: Header, coercion: Coercion,
                   spans: list[tuple[int, int, int]] | None = None) -> frozenset[int]:
    """The top-level elements of the coerced ``header.dataset`` that :func:`encode_coerced` re-encodes: those
    the coercion wrote, and after a character set change every decoded text element and sequence whose bytes
    as received (at ``spans``) do not mean the same in the new character set (:func:`_same_in_utf8`): the
    others keep their bytes as received."""
    ds = header.dataset
    if not coercion.charset_changed:
        return coercion.tags()
    written = coercion.tags()
    text = {int(tag) for tag, elem in ds.items() if not elem.is_raw and elem.VR in _TEXT_VRS}  # raw: not decoded
    values = _values(header, spans if spans is not None else element_spans(header), text - written)
    return written | {tag for tag in text if tag not in values or not _same_in_utf8(values[tag], coercion)}


def _values(header: Header, spans: list[tuple[int, int, int]], tags: set[int]) -> dict[int, bytes]:
    """The received value bytes of the top-level elements ``tags`` (the first of a tag sent twice)."""
    found: dict[int, bytes] = {}
    explicit = not header.enc.implicit
    for tag, start, stop in spans:
        if tag in tags and tag not in found:
            long = explicit and header.raw[start + 4:start + 6] in _LONG_VRS
            found[tag] = header.raw[start + (12 if long else 8):stop]
    return found


def _same_in_utf8(value: bytes, coercion: Coercion) -> bool:
    """True when ``value`` (an element's value as received) reads the same in UTF-8 (the character set a
    header is switched to) as in the header's own: ASCII without escapes (ISO 2022 code extension uses
    them), or text that was read as UTF-8 already (:attr:`~engine.reconcile.coerce.Coercion.utf8_read`)."""
    if value.isascii():
        return b"\x1b" not in value
    return coercion.utf8_read and utf8_text(value)


def encode_coerced(header: Header, coercion: Coercion,
                   spans: list[tuple[int, int, int]] | None = None) -> CoercedHeader:
    """``header.dataset`` after :func:`~engine.reconcile.coerce.coerce_header` returned ``coercion``, encoded
    in ``header.enc``.

    Spliced: the elements the coercion wrote (and the OriginalAttributesSequence it appended to; after a
    character set change every text element and sequence whose received bytes would read differently in the
    new one, :func:`reencoded_tags`) are encoded as pydicom encodes them (:func:`encoded_elements`) at their
    place in tag order, every other top-level element (at ``spans``, found when not given) is copied from
    ``header.raw`` as received.
    """
    spans = spans if spans is not None else element_spans(header)
    elements = encoded_elements(header, reencoded_tags(header, coercion, spans))
    head = splice(header.raw, spans, elements)
    return CoercedHeader(head, None if coercion.charset_changed else elements)


class CoercedStream(FileTail):
    """The coerced data set: the new header bytes, then the spool from the bulk on.

    :meth:`~engine.archive.location.ArchiveLocation.stage` copies it as a
    :class:`~engine.archive.location.FileTail`; it can also be read as a stream (:meth:`read`).
    :attr:`received_sha256` is the hash of the dataset *as received* (the old header bytes,
    then the same bulk), so that a resend of the same image is still recognised; when the
    caller knows it already (the streamed receive hashed the data set as it wrote the
    spool), it is taken as is, else computed from the spool when first asked for.
    """

    def __init__(self, head: bytes, old_head: bytes, spool: BinaryIO, bulk_at: int,
                 received_sha256: str = "") -> None:
        super().__init__(head, spool, bulk_at)
        self._old_head = old_head
        self._known = received_sha256
        self._stream: BytesIO | None = None
        spool.seek(bulk_at)

    def received(self, sha256: str) -> None:
        """The received data set's hash, when the caller learnt it after this stream was made."""
        self._known = sha256

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (the header first); b"" at the end."""
        if self._stream is None:
            self._stream = BytesIO(self.head)
        return self._stream.read(size) or self.source.read(size)

    @property
    def received_sha256(self) -> str:
        """SHA-256 of the dataset as received."""
        if not self._known:
            digest = hashlib.sha256(self._old_head)
            at = self.offset
            while chunk := os.pread(self.source.fileno(), 1 << 20, at):
                digest.update(chunk)
                at += len(chunk)
            self._known = digest.hexdigest()
        return self._known


def read_whole(spool: BinaryIO) -> Dataset:
    """The whole Part 10 file in ``spool`` as a dataset (a deflated one is inflated by pydicom), without the
    command and File Meta Information elements a sender put in its data set (:func:`_is_group_length`;
    pydicom refuses to write them there)."""
    spool.seek(0)
    ds = dcmread(spool)
    for tag in [t for t in ds.keys() if t >> 16 in (0x0000, 0x0002)]:  # noqa: SIM118 - ds itself yields elements
        del ds[tag]
    return ds


def encode_whole(ds: Dataset) -> bytes:
    """The dataset bytes (after the File Meta Information) of ``ds`` in its file's transfer syntax."""
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    data = out.getvalue()
    return data[dataset_offset(data[:1 << 16]):]


class WholeStream:
    """A readable stream over a dataset encoded whole, with the received dataset's hash."""

    def __init__(self, data: bytes, spool: BinaryIO, offset: int) -> None:
        self._data = BytesIO(data)
        received = hashlib.sha256()
        spool.seek(offset)
        while chunk := spool.read(1 << 20):
            received.update(chunk)
        self.received_sha256 = received.hexdigest()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes; b"" at the end."""
        return self._data.read(size)
