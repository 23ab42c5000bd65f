"""Rewriting one stored instance: its current version read through the archive, coerced, written anew.

:func:`rewrite_instance` is what a late order, ``studies link`` and a PIR correction do to
each image (:mod:`engine.domain.late_reconcile` indexes the results): the current version
is read in place from the primary when it can be, its bytes checked against the checksums
recorded at ingest as they are streamed, or else from a verified copy in either location
(:class:`~engine.archive.rewriting.RewriteIO`); the header is coerced (a new
OriginalAttributesSequence item) and the file written, durable, into the primary as
``<SOPInstanceUID>.<hash>.dcm`` beside the old one. Nothing is indexed here.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom.errors import InvalidDicomError

from engine.archive.archive import CurrentInstance
from engine.archive.part10 import dataset_offset
from engine.archive.rewriting import RewriteIO
from engine.domain.correction_message import CorrectedPatient
from engine.domain.instances import InstanceAttributes
from engine.domain.reforward import Correction
from engine.errors import CopyMissing, MalformedDataset
from engine.reconcile.coerce import Modification, coerce_header
from engine.reconcile.rewrite import (
    CoercedStream,
    WholeStream,
    elements_after_bulk,
    encode_coerced,
    encode_whole,
    encoding_of,
    read_header,
    read_whole,
)

__all__ = ["Rewritten", "current_of", "rewrite_instance"]

log = logging.getLogger(__name__)
_HEAD = 1 << 16
#: What reading a damaged file in place may raise (the verified copy is read then).
_PARSE_ERRORS = (MalformedDataset, InvalidDicomError, ValueError, EOFError, OSError, KeyError, struct.error)


@dataclass(frozen=True, slots=True)
class Rewritten:
    """One instance's coerced file, durable, about to be indexed."""

    instance_pk: int
    path: str
    size: int
    sha256: str
    attrs: InstanceAttributes
    changed: tuple[str, ...] = ()
    patient: CorrectedPatient | None = None

    def correction(self) -> Correction:
        """What :func:`~engine.domain.reforward.queue_correction` needs to know."""
        assert self.patient is not None
        return Correction(self.instance_pk, self.attrs, self.changed, self.patient)


class _Unusable(Exception):
    """The primary file read in place is missing, unreadable or not what was recorded at ingest."""


def current_of(row: Any) -> CurrentInstance:
    """The archive's view of an ``instances`` row outer-joined with its ``instance_copies`` columns."""
    return CurrentInstance(int(row.id), row.sop_instance_uid, "", "", row.path, int(row.size), row.sha256,
                           row.meta_sha256 or None, row.primary_state or "PRESENT", row.secondary_state or "NONE")


def rewrite_instance(io: RewriteIO, row: Any, target: dict[str, Any], mod: Modification) -> Rewritten | None:
    """Coerce the current version of one stored instance into a new file in the primary; None when nothing
    changes (or no intact copy is left anywhere: logged, the image stays as stored).

    Reads the primary file in place when it can (:meth:`RewriteIO.direct`), checking what it
    streamed against the recorded checksums before the new file gets a name; else, or when that
    copy proves unusable, a verified copy from either location. A location that cannot be read
    raises :class:`~engine.errors.ArchiveUnavailable` (the request stays; the next run retries).
    """
    inst = current_of(row)
    direct = io.direct(inst)
    if direct is not None:
        try:
            return _rewrite_file(io, direct, row, target, mod, inst)
        except _Unusable as exc:
            log.warning("correction: the primary copy of instance %s is unusable (%s): reading a verified copy",
                        inst.sop_instance_uid, exc)
    try:
        with io.verified_copy(inst) as scratch:
            return _rewrite_file(io, scratch, row, target, mod, None)
    except CopyMissing as exc:
        log.error("correction: instance %s left as stored: %s (radbridge archive verify/restore; the next"
                  " correction of its patient or order rewrites it)", inst.sop_instance_uid, exc)
        return None


def _rewrite_file(io: RewriteIO, source: Path, row: Any, target: dict[str, Any], mod: Modification,
                  check: CurrentInstance | None) -> Rewritten | None:
    """Coerce the Part 10 file ``source`` into a new file in the primary; with ``check``, the bytes read
    must match its checksums (else :class:`_Unusable`, and nothing is placed)."""
    enc = encoding_of(row.transfer_syntax_uid)
    try:
        f = open(source, "rb")  # noqa: SIM115 - closed below; its opening failing is its own case
    except OSError as exc:
        raise _Unusable(type(exc).__name__) from exc
    with f:
        try:
            offset = dataset_offset(f.read(_HEAD))
            f.seek(0)
            meta = f.read(offset)
            header = read_header(f, offset, enc) if enc is not None else None
            ds = header.dataset if header is not None else read_whole(f)
        except _PARSE_ERRORS as exc:
            if check is None:
                raise
            raise _Unusable(f"unreadable: {type(exc).__name__}") from exc
        prior = (str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or ""))
        coercion = coerce_header(ds, target, mod)
        changed = coercion.changed
        if not changed:
            return None
        if header is not None and coercion.charset_changed and elements_after_bulk(f, header):
            header = read_header(f, offset, header.enc, whole=True)  # their text re-encoded too
            coercion = coerce_header(header.dataset, target, mod)
        stream = (CoercedStream(encode_coerced(header, coercion).head, header.raw, f, header.bulk_at)
                  if header is not None else WholeStream(encode_whole(ds), f, offset))
        staged = io.primary.stage(meta, cast(BinaryIO, stream))
        # The received hash may be computed from the source when first asked for: while it is open.
        received = stream.received_sha256 if check is not None else ""
    if check is not None and not io.intact(check, meta, received):
        io.primary.discard(staged.path)
        raise _Unusable("it does not match the checksums recorded at ingest")
    attrs = InstanceAttributes.from_dataset(ds)
    stem = f"{attrs.study_instance_uid}/{attrs.series_instance_uid}/{attrs.sop_instance_uid}"
    path, _ = io.primary.place(staged, [f"{stem}.{staged.sha256[:16]}.dcm"])
    return Rewritten(int(row.id), path, staged.size, staged.sha256, attrs, changed,
                     CorrectedPatient.from_dataset(ds, *prior))
