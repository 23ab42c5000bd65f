"""Storage SCP: C-STORE for every storage SOP class, durable before success (PS3.4 B.2).

pynetdicom receives each dataset straight into a spool file in the primary
location's ``.incoming`` directory (``_config.STORE_RECV_CHUNKED_DATASET``), so
an instance of any size (up to ``dicom.max_instance_bytes``, within the spool bounds of
:mod:`channels.dicom.store_stream`) is streamed to disk, never held in memory. For each
request :meth:`StorageService.store`:

1. checks the received bytes: a well-formed encoding (:mod:`engine.archive.structure`),
   a readable header, valid Study/Series/SOP Instance UIDs matching the command,
   a SOP class matching the command and the presentation context. A refusal
   keeps whatever arrived in the quarantine location (with an index row) and
   answers its failure status (:data:`REFUSALS`);
2. writes the DICOM Part 10 file (File Meta Information for the received
   dataset, then the dataset bytes as received, pixel data never decoded) to a
   temporary name, fsyncs it, links it into place and fsyncs the directory
   (:class:`~engine.archive.location.ArchiveLocation`);
3. indexes it (study, series, instance) in one committed transaction
   (:func:`~engine.domain.instances.index_instance`; with a secondary location
   the copy owed to it is queued in the same transaction,
   :mod:`engine.archive.replication`), and only then answers 0x0000. A
   location that cannot take the file, or a commit that fails, answers 0xA700
   (out of resources), never success; any other error answers 0xC211
   (processing failure) and quarantines what arrived, with the exception's type
   as the reason (the traceback is logged).

The spool file, and what happens when the disk fills while it is written, is
:mod:`channels.dicom.spool`'s business.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import logging
import mmap
import os
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from engine.archive.flush import FlushAhead, HashAhead
from engine.archive.location import ArchiveLocation, FileTail, StagedFile
from engine.archive.part10 import as_written, dataset_offset, encode_file_meta, with_room
from engine.archive.rehead import rehead, rewrite_front
from engine.archive.s3_primary import primary_location
from engine.archive.spool_budget import SpoolBudget
from engine.archive.structure import Encoding, check_structure
from engine.config.models import DicomDestinationConfig, EngineConfig
from engine.domain.ingest import index_received
from engine.domain.instances import (
    PROCESSING_FAILURE,
    DuplicatePolicy,
    IndexOutcome,
    InstanceAttributes,
    QuarantineRecord,
    SeriesConflict,
    StoredFile,
    is_valid_uid,
    record_quarantine,
)
from engine.domain.reconciler import PatientMismatch, Prepared, Reconciler, SeriesElsewhere
from engine.domain.routing import forwarding_destinations
from engine.errors import ArchiveUnavailable, MalformedDataset, StoreUnavailable
from engine.reconcile.rewrite import (
    WHOLE_LIMIT,
    CoercedStream,
    Header,
    WholeStream,
    encode_whole,
    read_header,
    read_whole,
    without_meta_elements,
)
from engine.store.database import Database

from .spool import enable_streamed_receive, spool_failure

__all__ = [
    "PROCESSING_FAILURE",
    "REFUSALS",
    "RETIRED_STORAGE_SOP_CLASSES",
    "STORAGE_SOP_CLASSES",
    "StorageService",
    "StoreRequest",
    "StreamedFile",
    "idle_timer_paused",
    "prepare_locations",
    "refusal",
]

log = logging.getLogger(__name__)

#: Retired storage SOP classes old modalities still send (PS3.4 B.5 lists them as retired), from
#: pydicom's UID dictionary; not print, media directory or storage commitment classes.
_NOT_INSTANCE_STORAGE = ("Print", "Hardcopy", "MediaStorage", "StorageCommitment")
RETIRED_STORAGE_SOP_CLASSES = tuple(
    uid for uid, (_, kind, _, retired, keyword) in UID_dictionary.items()
    if kind == "SOP Class" and retired == "Retired" and "Storage" in keyword
    and not any(word in keyword for word in _NOT_INSTANCE_STORAGE)
)  # fmt: skip

#: Every storage SOP class pynetdicom knows (PS3.4 B.5) and the retired ones, each accepted in
#: any transfer syntax offered.
STORAGE_SOP_CLASSES = tuple(
    dict.fromkeys([*(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts), *RETIRED_STORAGE_SOP_CLASSES])
)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3 Refused: Out of Resources
DUPLICATE_REJECTED = 0x0111  # PS3.7 C.4 Duplicate SOP Instance (archive.duplicate_policy: reject)

#: Why a dataset is refused -> (status, meaning). PS3.4 B.2.3: A9xx data set does not match the
#: SOP class, Cxxx cannot understand.
REFUSALS: dict[str, tuple[int, str]] = {
    "unparsable": (0xC210, "the dataset cannot be parsed"),
    "missing_uid": (0xC220, "SOP Instance, Study or Series Instance UID missing or invalid"),
    "instance_mismatch": (0xC221, "SOPInstanceUID differs from the command's Affected SOP Instance UID"),
    "class_mismatch": (0xA900, "SOPClassUID differs from the command's or the presentation context's"),
    "patient_mismatch": (0xC230, "the Patient ID is not the study's patient's (reconcile.patient_id_mismatch)"),
    "series_conflict": (0xC240, "the Series Instance UID is filed under another study (a series is never split"
                                " across two studies)"),
    # Not a fault of the data set: an error the service did not foresee (a defect). Answered and kept
    # like a refusal, so that the image is not lost and `radbridge status` shows it.
    "processing_failure": (PROCESSING_FAILURE, "processing failure: an unexpected error in the storage service"
                                               " (the log has it)"),
}

#: The Error Comment (0000,0902; LO, at most 64 characters) of each refusal's response: what was wrong,
#: without patient data (the detail, which may hold a value of the data set, goes to the log and the
#: quarantine row only).
ERROR_COMMENTS: dict[str, str] = {
    "unparsable": "data set cannot be parsed",
    "missing_uid": "SOP Instance, Study or Series Instance UID missing or invalid",
    "instance_mismatch": "SOP Instance UID differs from Affected SOP Instance UID",
    "class_mismatch": "SOP Class UID differs from the command's or the context's",
    "patient_mismatch": "Patient ID differs from the stored study's patient's",
    "series_conflict": "Series Instance UID already filed under another study",
    "processing_failure": "processing failure in the storage service",
}

_HEAD = 1 << 16
#: A spool file not written to for this long belongs to an association that died mid-transfer
#: (pynetdicom's network timeout is far shorter); swept at most every SWEEP_EVERY_SECONDS.
ABANDONED_AFTER_SECONDS = 600.0
SWEEP_EVERY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class StreamedFile:
    """What the streamed receive (:mod:`channels.dicom.store_stream`) knows of the spool it wrote: the
    size of the data set bytes after the File Meta Information it wrote, and their SHA-256 when it
    computed it ("": :meth:`StorageService.store` computes it, :class:`~engine.archive.flush.HashAhead`)."""

    size: int
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """One C-STORE as received: the spool file and what the command and context said.

    ``streamed`` is set when the spool was written by the streamed receive: then, if its
    File Meta Information is the one this service would write, the spool itself is the
    file to archive (fsynced and linked, not copied).
    """

    spool: Path
    sop_class_uid: str
    sop_instance_uid: str
    abstract_syntax: str
    transfer_syntax_uid: str
    calling_ae: str
    streamed: StreamedFile | None = None


def refusal(attrs: InstanceAttributes, request: StoreRequest) -> str | None:
    """The :data:`REFUSALS` key for a parsed header that cannot be stored as sent, else None."""
    uids = (attrs.sop_instance_uid, attrs.study_instance_uid, attrs.series_instance_uid)
    if not all(is_valid_uid(uid) for uid in uids):
        return "missing_uid"
    if attrs.sop_instance_uid != request.sop_instance_uid:
        return "instance_mismatch"
    if attrs.sop_class_uid != request.sop_class_uid or request.sop_class_uid != request.abstract_syntax:
        return "class_mismatch"
    return None


class _Refused(Exception):
    def __init__(self, key: str, detail: str = "", comment: str = "", placed: str | None = None,
                 owned: bool = True) -> None:
        super().__init__(key)
        self.key = key
        self.detail = detail
        self.comment = comment  # the Error Comment, when more precise than the refusal's (no data set value)
        # refused once filed in the archive (the spool is gone): the name the primary placed it under, to keep
        # instead (a file of a directory location, an object of an S3 primary: ArchiveLocation.open_placed)
        self.placed = placed
        # False: ``placed`` was already there with the same content (its content-hash name was taken), and may be
        # another index row's file: copied to quarantine, never removed
        self.owned = owned


def _deflate_refusal(spool: BinaryIO, offset: int, exc: Exception) -> _Refused:
    """Why a deflated data set could not be inflated. A zlib stream (RFC 1950: a two-byte header, then an
    Adler-32 after the deflate data) where PS3.5 A.5 requires raw deflate (RFC 1951) is said so: some
    senders wrap it so (zlib's ``compress`` instead of a raw deflater). It is not inflated and kept: its
    bytes are stored as received, so a stored file would hold the non-conformant stream that DCMTK and
    pydicom cannot read, and re-deflating it would store other bytes than the sender's."""
    spool.seek(offset)
    with contextlib.suppress(zlib.error):  # inflated as a zlib stream, its start is one
        zlib.decompressobj().decompress(spool.read(1 << 16), 1 << 16)
        return _Refused("unparsable", "the deflated data set has a zlib header (RFC 1950): the transfer syntax"
                        " requires raw deflate (RFC 1951, PS3.5 A.5)",
                        "deflate with a zlib header: raw RFC 1951 expected")
    return _Refused("unparsable", f"the deflated data set cannot be inflated: {exc}",
                    "deflated data set cannot be inflated")


@functools.lru_cache(maxsize=64)
def _encoding(transfer_syntax_uid: str) -> Encoding | None:
    """How to walk the dataset, or None where it cannot be walked as bytes (deflate); kept per transfer
    syntax (a pydicom ``UID`` is validated each time it is made)."""
    ts = UID(transfer_syntax_uid)
    if ts.is_deflated:
        return None
    try:
        return Encoding(bool(ts.is_implicit_VR), bool(ts.is_little_endian))
    except ValueError:  # a transfer syntax pydicom does not know: encapsulated, explicit VR LE
        return Encoding(False, True)


def _check(spool: BinaryIO, offset: int, request: StoreRequest) -> tuple[InstanceAttributes, Header | None, bool]:
    """Structure, header and identity checks; raise :class:`_Refused` with the reason.

    Returns the index attributes, the parsed header (the elements before the pixel data,
    kept for reconciliation so the header is parsed once), or None for a deflated data set,
    read whole through ``dcmread`` (the File Meta Information is not parsed again otherwise),
    and whether the data set holds command or File Meta Information elements (groups 0000/0002),
    anywhere among its top-level elements. A deflated data set is read to its end for them (pydicom
    inflates it whole in memory either way; values over 1 KiB, the pixel data, are skipped, not read).
    """
    enc = _encoding(request.transfer_syntax_uid)
    deflated_meta = False
    try:
        if enc is not None:
            with mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                meta_end = check_structure(buf, offset, len(buf), enc)
            header: Header | None = _with_meta_elements(spool, offset, enc, meta_end) if meta_end else (
                read_header(spool, offset, enc))
            ds = header.dataset  # type: ignore[union-attr]
        else:
            spool.seek(0)
            header, ds = None, dcmread(spool, defer_size=1024)  # not stop_before_pixels: one may follow
            deflated_meta = any(tag >> 16 in (0x0000, 0x0002) for tag in ds.keys())  # noqa: SIM118
        attrs = InstanceAttributes.from_dataset(ds)
    except MalformedDataset as exc:
        raise _Refused("unparsable", str(exc)) from exc
    except zlib.error as exc:  # only a deflated data set is inflated
        raise _deflate_refusal(spool, offset, exc) from exc
    except Exception as exc:  # pydicom raises many types on bad bytes; all mean "cannot be parsed"
        raise _Refused("unparsable", type(exc).__name__) from exc
    key = refusal(attrs, request)
    if key is not None:
        raise _Refused(key)
    size = os.fstat(spool.fileno()).st_size - offset
    if enc is not None and size % 2:  # PS3.8 E.1: every PDV fragment even, so no PACS could be sent it
        raise _Refused("unparsable", f"odd data set length {size} (an odd-length value, PS3.5 7.1.1)")
    return attrs, header, deflated_meta or (header is not None and header.meta_elements)


def _with_meta_elements(spool: BinaryIO, offset: int, enc: Encoding, meta_end: int) -> Header:
    """The header of a data set holding group 0000/0002 elements up to ``meta_end`` (the structure check found
    them): read as usual when they are all before the pixel data; when one is after it, the whole data set is
    read as its header (at most :data:`~engine.reconcile.rewrite.WHOLE_LIMIT` bytes; kept as received beyond,
    with a warning) so that the splice leaves it out too."""
    header = read_header(spool, offset, enc)
    if meta_end > header.bulk_at:
        if os.fstat(spool.fileno()).st_size - header.bulk_at <= WHOLE_LIMIT:
            header = read_header(spool, offset, enc, whole=True)
        else:
            log.warning("a command or File Meta Information element after the pixel data of a %d MB data set is"
                        " kept as received: over the %d MB it may be read whole for", header.bulk_at >> 20,
                        WHOLE_LIMIT >> 20)
    return dataclasses.replace(header, meta_elements=True)


def _without_meta_elements(spool: BinaryIO, offset: int, header: Header | None, prepared: Prepared) -> Prepared:
    """``prepared`` (a data set stored as received, holding command or File Meta Information elements its
    sender put in it, PS3.10 7.1) without them: the header spliced without them (the rest streamed as
    received), a deflated data set inflated and written again whole."""
    if header is not None:
        cleaned = without_meta_elements(header)
        if cleaned is None:
            return prepared
        return Prepared(CoercedStream(cleaned, header.raw, spool, header.bulk_at), prepared.attrs, prepared.match)
    return Prepared(WholeStream(encode_whole(read_whole(spool)), spool, offset), prepared.attrs, prepared.match)


@contextlib.contextmanager
def idle_timer_paused(assoc: Any) -> Iterator[None]:
    """``assoc``'s idle timer (``dicom.idle_timeout_seconds``) stopped while a store runs, restarted after it.

    The peer waits for the C-STORE response meanwhile and sends nothing: a store that waits on the
    database (up to ``database.answer_timeout_seconds`` a request) or a long fsync was counted as the
    peer's idleness, and the listener's watchdog (:mod:`channels.dicom.listener`) cut the connection
    ``idle_timeout_seconds`` + 2 s into it, the image stored but its response lost (pynetdicom's own
    check would abort it after). A stopped timer never expires; the idle time counts again from the
    store's end. (pynetdicom internals: the DUL's ``_idle_timer``, ``stop`` and ``restart``.)
    """
    timer = getattr(getattr(assoc, "dul", None), "_idle_timer", None)
    paused = callable(getattr(timer, "stop", None)) and callable(getattr(timer, "restart", None))
    if paused:
        timer.stop()  # type: ignore[union-attr]
    try:
        yield
    finally:
        if paused:
            timer.restart()  # type: ignore[union-attr]


@dataclass(slots=True)
class StorageService:
    """Stores C-STORE requests into ``primary``, refusals into ``quarantine``, and indexes them."""

    db: Database
    primary: ArchiveLocation
    quarantine: ArchiveLocation
    policy: DuplicatePolicy
    reconciler: Reconciler | None = None  # None: stored as received, never matched (reconcile.enabled off)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    replicate: bool = False  # archive.secondary: each stored instance owes a copy (engine.archive.replication)
    _next_sweep: float = 0.0
    #: DICOM destinations a stored image may be queued for (engine.domain.routing), and what to
    #: call once rows were queued (the outbox worker's wake-up; any thread).
    forwards: tuple[DicomDestinationConfig, ...] = ()
    on_queued: Callable[[], None] | None = None

    @classmethod
    def from_config(cls, db: Database, config: EngineConfig,
                    on_queued: Callable[[], None] | None = None) -> StorageService:
        """The service for ``archive:``; :meth:`prepare` must run before the first request."""
        return cls(db, primary_location(config),  # a directory, or an object store (engine.archive.s3_primary)
                   ArchiveLocation("quarantine", config.quarantine_dir()), config.archive.duplicate_policy,
                   Reconciler.from_config(db, config), replicate=config.archive.secondary is not None,
                   forwards=forwarding_destinations(config.destinations), on_queued=on_queued)

    def prepare(self) -> None:
        """Create both locations and remove temporary files an interrupted store left behind."""
        self.primary.prepare()
        self.quarantine.prepare()

    def on_store(self, event: Any) -> int | Dataset:
        """``EVT_C_STORE`` handler: the response status (0xC210 for a request that carried no data set), with
        its Error Comment when there is one."""
        with idle_timer_paused(event.assoc):  # our store's time is not the peer's idleness
            return self._on_store(event)

    def _on_store(self, event: Any) -> int | Dataset:
        if event.dataset_path is None:  # CommandDataSetType 0x0101: nothing arrived, nothing to keep
            log.info("C-STORE %s from %s refused (0x%04X): the request carries no data set",
                     event.request.AffectedSOPInstanceUID, str(event.assoc.requestor.ae_title).strip(),
                     REFUSALS["unparsable"][0])
            return _status(REFUSALS["unparsable"][0], "the request carries no data set")
        request = StoreRequest(
            Path(event.dataset_path), str(event.request.AffectedSOPClassUID or ""),
            str(event.request.AffectedSOPInstanceUID or ""), str(event.context.abstract_syntax),
            str(event.context.transfer_syntax), str(event.assoc.requestor.ae_title).strip(),
        )  # fmt: skip
        return _status(*self.answer(request))

    def spool_meta(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                   calling_ae: str) -> bytes:
        """The File Meta Information a receiver writes first into a spool of ``primary``'s ``.incoming``.

        While images are coerced it is padded to a whole block (:func:`~engine.archive.part10.with_room`):
        a coerced header that grew by less than the padding is then written over the spool's front in
        place (:func:`~engine.archive.rehead.rewrite_front`), without inserting a range into the file
        (which writes it back and drops its cached pages). An image stored as received keeps the padding:
        a Private Information element of zeros in its File Meta Information (PS3.10 7.1); its data set is
        untouched.
        """
        meta = encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid, calling_ae)
        return with_room(meta) if self.reconciling else meta

    def store(self, request: StoreRequest) -> int:
        """Store one request durably and index it; the DIMSE status to answer."""
        return self.answer(request)[0]

    def answer(self, request: StoreRequest) -> tuple[int, str]:
        """:meth:`store`, with the Error Comment to answer beside the status ("" on success and for the
        out-of-resources and duplicate statuses)."""
        now = self.clock()
        self._sweep(time.time())
        failed = spool_failure(request.spool)
        if failed is not None:
            log.error("C-STORE %s from %s refused, out of resources: the spool write failed: %s (%s) in %s",
                      request.sop_instance_uid, request.calling_ae, errno.errorcode.get(failed.errno or 0, failed),
                      failed.strerror, Path(request.spool).parent)  # which file system, for the operator
            return OUT_OF_RESOURCES, ""
        # The data set's hash and the spool's fsync run while it is checked and matched; the hash is
        # waited for before the spool is staged (or changed), the fsync before the file is named.
        streamed = request.streamed
        hashing = HashAhead(request.spool, streamed.size) if streamed is not None and not streamed.sha256 else None
        ahead = self.primary.flush_ahead(request.spool) if streamed is not None else None
        try:
            with open(request.spool, "rb") as spool:
                return self._store(spool, request, now, ahead, hashing), ""
        except _Refused as refused:
            return self._quarantine(request, refused, now)
        except (ArchiveUnavailable, StoreUnavailable, SQLAlchemyError, OSError) as exc:
            log.error("C-STORE %s from %s refused, out of resources: %s",
                      request.sop_instance_uid, request.calling_ae, exc)
            return OUT_OF_RESOURCES, ""
        except Exception as exc:  # unforeseen: the traceback in the log, what arrived in quarantine
            log.exception("C-STORE %s from %s: the storage service failed", request.sop_instance_uid,
                          request.calling_ae)
            return self._quarantine(request, _Refused("processing_failure", type(exc).__name__), now)

    def _store(self, spool: BinaryIO, request: StoreRequest, now: datetime, ahead: FlushAhead | None,
               hashing: HashAhead | None = None) -> int:
        head = spool.read(_HEAD)
        try:
            offset = dataset_offset(head)
        except MalformedDataset as exc:
            raise _Refused("unparsable", str(exc)) from exc
        attrs, header, meta_elements = _check(spool, offset, request)
        prepared = self._reconcile(spool, offset, request, attrs, header, now)  # reconciliation (#13): match + coerce
        if meta_elements and not prepared.coerced:  # stored as received, but never with group 0000/0002 elements
            # (not received_sha256(): before hashing.wait() that hashes a coerced data set's spool again, here)
            prepared = _without_meta_elements(spool, offset, header, prepared)
        if hashing is not None:  # before anything reads the hash or changes the spool
            request = dataclasses.replace(request, streamed=StreamedFile(hashing.size, hashing.wait()))
            prepared.received(request.streamed.sha256)  # type: ignore[union-attr]
        received, attrs = attrs, prepared.attrs
        meta = encode_file_meta(attrs.sop_class_uid, attrs.sop_instance_uid, request.transfer_syntax_uid,
                                request.calling_ae)
        if prepared.received_sha256():  # coerced: the spool given its new head in place, or a copy
            staged, meta = self._stage_coerced(request, meta, prepared)
        else:  # as received: the streamed spool itself when it can be adopted (its meta, padded or not)
            meta = as_written(meta, head, offset) or meta
            staged = self._stage(request, head, meta, prepared.stream(), ahead)
        # UIDs are checked (digits and dots): safe as names. The second name, with the content
        # hash, is for a resend whose first name is taken (replace policy, or a crash's orphan).
        stem = f"{attrs.study_instance_uid}/{attrs.series_instance_uid}/{attrs.sop_instance_uid}"
        names = [f"{stem}.dcm", f"{stem}.{staged.sha256[:16]}.dcm"]
        path, created = self.primary.place(staged, names)
        received_study = received.study_instance_uid if received.study_instance_uid != attrs.study_instance_uid else ""
        stored = StoredFile(self.primary.name, path, staged.size, staged.sha256, request.transfer_syntax_uid,
                            request.calling_ae, now, prepared.received_sha256(), received_study)
        # A failed commit leaves the placed file where it is, complete but unindexed: whether a
        # commit whose acknowledgement was lost took effect is unknown, and removing a file an
        # index row names would lose an image. A resend links the next free name.
        # One transaction (engine.domain.ingest): indexed, linked to its order, its copies recorded
        # and owed, and queued for each forwarding destination.
        try:
            outcome, queued = self._commit(functools.partial(
                index_received, attrs=attrs, stored=stored, policy=self.policy, match=prepared.match,
                strict=self.reconciling, meta_sha256=hashlib.sha256(meta).hexdigest(), replicate=self.replicate,
                destinations=self.forwards, now=now))
        except SeriesConflict as exc:  # raced an image of the series under another study (checked before)
            raise _Refused("series_conflict", "filed under another study by a concurrent store",
                           placed=path, owned=created) from exc
        if queued and self.on_queued is not None:
            self.on_queued()
        if outcome in (IndexOutcome.UNCHANGED, IndexOutcome.REJECTED) and created:
            self.primary.discard(self.primary.path(path))
        if outcome is IndexOutcome.REJECTED:
            log.info("C-STORE %s from %s: different content for a stored instance, rejected by policy",
                     attrs.sop_instance_uid, request.calling_ae)
            return DUPLICATE_REJECTED
        return SUCCESS

    @property
    def reconciling(self) -> bool:
        """True when images are matched and coerced (``reconcile.enabled`` and its mapping loaded)."""
        return self.reconciler is not None and self.reconciler.mapping is not None

    def _reconcile(self, spool: BinaryIO, offset: int, request: StoreRequest, attrs: InstanceAttributes,
                   header: Header | None, now: datetime) -> Prepared:
        """The order's values in the header (engine.domain.reconciler); the spool positioned to copy."""
        if self.reconciler is None:
            spool.seek(offset)
            return Prepared(spool, attrs)
        try:
            known = request.streamed.sha256 if request.streamed is not None else ""  # hashed as received
            return self.reconciler.prepare(spool, offset, _encoding(request.transfer_syntax_uid), attrs,
                                           request.calling_ae, now, header, known)
        except PatientMismatch as exc:
            raise _Refused("patient_mismatch", str(exc)) from exc
        except SeriesElsewhere as exc:
            raise _Refused("series_conflict") from exc

    def _stage(self, request: StoreRequest, head: bytes, meta: bytes, dataset: BinaryIO,
               ahead: FlushAhead | None) -> StagedFile:
        """The file to place: the streamed spool itself when it starts with ``meta`` (then it holds exactly
        ``meta`` + the data set as received, hashed as it was written; its fsync is ``ahead``'s, started
        when the store began), else a fsynced copy."""
        streamed = request.streamed
        if streamed is not None and request.spool.parent == self.primary.incoming and head.startswith(meta):
            return self.primary.adopt(request.spool, streamed.size, streamed.sha256, ahead)
        return self.primary.stage(meta, dataset)

    def _stage_coerced(self, request: StoreRequest, meta: bytes, prepared: Prepared) -> tuple[StagedFile, bytes]:
        """The coerced file and the File Meta Information it starts with: the streamed spool given its new
        head in place (:mod:`engine.archive.rehead`; its pixel data stays where the receiver wrote it, the
        meta padded), else a fsynced copy."""
        body = prepared.body
        if request.streamed is not None and isinstance(body, FileTail):
            done = (rewrite_front(self.primary, request.spool, meta, body)
                    or rehead(self.primary, request.spool, meta, body))
            if done is not None:
                return done.staged, done.meta
        return self.primary.stage(meta, prepared.stream()), meta

    def _commit(self, work: Callable[[Connection], tuple[IndexOutcome, int]]) -> tuple[IndexOutcome, int]:
        """Run ``work`` in a committed (durable) transaction; :class:`StoreUnavailable` if it cannot commit.

        A lone store commits in this thread when the writer is idle (no hand-over to the writer
        thread and back); concurrent stores queue and share the writer's group commits, whose
        failure reaches every one of them. Driver errors raised by the receive path's raw
        statements (:mod:`engine.store.fast`) are database failures like SQLAlchemy's.
        """
        writer = self.db.writer
        try:
            done, result = writer.run_inline(work)
            if not done:
                return writer.call(work)
            if isinstance(result, BaseException):
                raise result
        except Exception as exc:
            dbapi = self.db.write_engine.dialect.dbapi
            if isinstance(exc, SQLAlchemyError) or (dbapi is not None and isinstance(exc, dbapi.Error)):
                raise StoreUnavailable(f"the index cannot commit: {type(exc).__name__}") from exc
            raise
        return result  # type: ignore[return-value]

    def _sweep(self, wall: float) -> None:
        """Remove abandoned spool files, at most once every SWEEP_EVERY_SECONDS."""
        if wall < self._next_sweep:
            return
        self._next_sweep = wall + SWEEP_EVERY_SECONDS
        self.primary.sweep(ABANDONED_AFTER_SECONDS, wall)
        self.quarantine.sweep(ABANDONED_AFTER_SECONDS, wall)

    def _quarantine(self, request: StoreRequest, refused: _Refused, now: datetime) -> tuple[int, str]:
        """Keep what arrived (if anything) with an index row; the refusal's status and Error Comment in any
        case."""
        status, meaning = REFUSALS[refused.key]
        reason = f"{meaning}: {refused.detail}" if refused.detail else meaning
        log.info("C-STORE %s from %s refused (0x%04X): %s", request.sop_instance_uid, request.calling_ae,
                 status, reason)
        try:
            if refused.placed is not None:  # the file as placed (the spool became it), moved to quarantine
                with contextlib.closing(self.primary.open_placed(refused.placed)) as placed:
                    self._keep(request, placed, status, reason, now)
                if refused.owned:
                    self.primary.discard(self.primary.path(refused.placed))
            else:
                with open(request.spool, "rb") as spool:
                    self._keep(request, spool, status, reason, now)
        except (ArchiveUnavailable, StoreUnavailable, SQLAlchemyError, OSError) as exc:
            log.error("C-STORE %s: the refused dataset could not be quarantined: %s", request.sop_instance_uid, exc)
        return status, refused.comment or ERROR_COMMENTS[refused.key]

    def _keep(self, request: StoreRequest, received: BinaryIO, status: int, reason: str, now: datetime) -> None:
        staged = self.quarantine.stage(b"", received)
        if staged.size == 0:
            self.quarantine.discard(staged.path)
            return
        name = f"{now:%Y%m%d}/{now:%H%M%S}-{uuid.uuid4().hex[:12]}.dcm"
        path, _ = self.quarantine.place(staged, [name])
        record = QuarantineRecord(now, request.calling_ae[:16], request.sop_class_uid, request.sop_instance_uid,
                                  request.transfer_syntax_uid, status, reason, self.quarantine.name, path,
                                  staged.size, staged.sha256)
        self.db.writer.call(functools.partial(record_quarantine, record=record))


def _status(status: int, comment: str) -> int | Dataset:
    """A handler's answer: the status alone, or a status data set with its Error Comment."""
    if not comment:
        return status
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = comment[:64]
    return answer


def add_storage_contexts(ae: Any) -> None:
    """Accept every storage SOP class in every transfer syntax pynetdicom knows (the SCU's choice wins).

    pynetdicom routes a SOP class it has no service class for (the retired ones) to the
    Storage service only with ``UNRESTRICTED_STORAGE_SERVICE`` (process-wide; the AE
    supports no other unknown class, so nothing else changes).
    """
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)


def prepare_locations(config: EngineConfig) -> None:
    """Create the primary and quarantine locations and empty their spools (once, before any receive)."""
    primary_location(config).prepare()
    ArchiveLocation("quarantine", config.quarantine_dir()).prepare()


def start_storage(ae: Any, config: EngineConfig, db: Database,
                  on_queued: Callable[[], None] | None = None, prepare: bool = True,
                  budget: SpoolBudget | None = None) -> StorageService:
    """Prepare the locations (``prepare``: the receive worker processes leave that to the engine
    process, see :func:`prepare_locations`), stream receives into the primary's spool (bounded by
    ``budget``, the per-host spool ledger, on pynetdicom's own receive path too), register the contexts."""
    service = StorageService.from_config(db, config, on_queued)
    if prepare:
        service.prepare()
    enable_streamed_receive(service.primary.incoming, config.dicom.max_instance_bytes, config.archive.min_free_bytes,
                            budget)
    add_storage_contexts(ae)
    return service
