"""DICOM C-STORE destination: forward a stored instance to a peer (pynetdicom SCU, PS3.4 B.2).

An outbox row names an instance (:class:`~engine.domain.routing.InstanceRef`);
:meth:`DicomDestination.send` reads the instance's *current* version through
the archive (:class:`~channels.dicom.forward_source.ForwardSource`: the primary
file, its checksum verified while it is sent, else a verified copy from the
secondary when the primary copy was tiered away, is missing or damaged) and
sends it on an association from the destination's
:class:`~channels.dicom.associations.AssociationPool`:

- in its stored transfer syntax whenever the peer accepts it, streamed from the
  file in 1 MB reads, pixel data never decoded (on the association pynetdicom
  negotiated, driven by :class:`~channels.dicom.store_link.StoreLink`; with a
  pynetdicom it was not checked against, by ``send_c_store`` with
  ``STORE_SEND_CHUNKED_DATASET``);
- otherwise, for an uncompressed little-endian instance (and
  ``uncompressed_conversion``), re-encoded in an uncompressed syntax the peer
  accepted (the header is decoded; pixel values are untouched);
- otherwise not at all: a permanent failure saying which SOP class and transfer
  syntax the peer refused. A compressed instance is never decompressed.

Outcomes: the response status per :mod:`channels.dicom.store_status`; an
association that cannot be opened, is rejected or aborted, or a response that
does not come in time is retryable; no intact copy in any location is permanent
(a dead letter naming what each location holds). Ordering, retries and dead letters are the
outbox's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydicom import dcmread
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dsutils import encode

from engine.archive.archive import archive_from_config
from engine.archive.location import INCOMING
from engine.config.models import DicomDestinationConfig
from engine.domain.routing import InstanceRef
from engine.errors import PermanentDelivery, RetryableDelivery
from engine.outbox.destination import DestinationContext, register_destination
from engine.tls import client_context

from .associations import CONVERTIBLE_SYNTAXES, FALLBACK_SYNTAXES, AssociationPool, PooledAssociation
from .forward_source import ForwardSource, InstanceFile, check_file
from .server import tune_association
from .store_link import SourceDamaged, StoreLink, detachable
from .store_status import Outcome, classify_store_status

__all__ = ["DicomDestination"]

log = logging.getLogger(__name__)

# Files are sent from disk in chunks, not read into a Dataset (process-wide; radbridge sends no
# other file by path).
_config.STORE_SEND_CHUNKED_DATASET = True


def _syntax_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def _refusal(accepted: list[str], file: InstanceFile, convert: bool) -> str:
    """Why ``file`` cannot be sent: the peer accepts its SOP class only in ``accepted`` syntaxes (maybe none)."""
    stored = _syntax_name(file.transfer_syntax_uid)
    if file.transfer_syntax_uid in CONVERTIBLE_SYNTAXES and not convert:
        why = "uncompressed_conversion is off"
    elif file.transfer_syntax_uid in CONVERTIBLE_SYNTAXES:
        why = "and no uncompressed syntax is accepted either"
    else:
        why = "radbridge never decompresses pixel data"
    accepts = f"accepts only {', '.join(sorted(set(accepted)))}" if accepted else "accepts no transfer syntax offered"
    return (f"the peer refuses SOP class {file.sop_class_uid} in the stored transfer syntax {stored}"
            f" ({accepts}); {why}")


def _accepted_syntaxes(assoc: Any, sop_class: str) -> list[str]:
    return [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]


def _association_failure(assoc: Any, where: str, file: InstanceFile,
                         convert: bool) -> RetryableDelivery | PermanentDelivery:
    """The error for an association that did not get established."""
    if assoc is not None and assoc.is_rejected:
        return RetryableDelivery(f"association rejected by {where}", f"association rejected by {where}")
    refused = list(getattr(assoc, "rejected_contexts", []) or [])
    if refused and not list(getattr(assoc, "accepted_contexts", []) or []):
        text = f"{where}: {_refusal([], file, convert)}"  # UIDs, syntaxes, the peer: no patient data
        return PermanentDelivery(text, text)  # the log line says why, not just "PermanentDelivery"
    text = f"no association with {where} (connection refused, timed out or aborted)"
    return RetryableDelivery(text, text)


def _response(status: Any) -> str:
    """The outbox response text for a C-STORE response, or a DeliveryError."""
    if status is None or "Status" not in status:
        raise RetryableDelivery(*["no C-STORE response (association aborted or DIMSE timeout)"] * 2)
    code = int(status.Status)
    meaning = classify_store_status(code)
    comment = str(status.get("ErrorComment", "") or "").strip()
    public = f"0x{code:04X} {meaning.meaning}"
    text = public + (f": {comment}" if comment else "")  # the peer's comment may quote the data set
    if meaning.outcome is Outcome.DELIVERED:
        return text
    if meaning.outcome is Outcome.PERMANENT:
        raise PermanentDelivery(text, public)
    raise RetryableDelivery(text, public)


class DicomDestination:
    """Sends stored instances to one C-STORE SCP, reusing associations."""

    def __init__(self, config: DicomDestinationConfig, context: DestinationContext) -> None:
        self.name = config.name
        self._config = config
        self._source = ForwardSource(archive_from_config(context.engine), context.db,
                                     context.engine.archive_dir() / INCOMING)
        self._where = f"{config.called_ae_title}@{config.host}:{config.port}"
        ae = AE(ae_title=config.calling_ae_title or context.engine.dicom.ae_title)
        ae.connection_timeout = config.connect_timeout_seconds
        ae.acse_timeout = config.connect_timeout_seconds
        ae.dimse_timeout = config.timeout_seconds
        # An idle pooled association must outlive its idle time; a stalled send is bounded by the
        # DIMSE timeout and the outbox's backstop.
        ae.network_timeout = max(config.timeout_seconds, config.idle_seconds + 5)
        self._ae = ae
        ssl_context = client_context(config.tls)
        # pynetdicom wants a name to verify; "" with verify_peer off (client_context turns the check off).
        hostname = (config.tls.server_hostname if config.tls else None) or config.host
        self._tls = (ssl_context, hostname) if ssl_context else None
        self._pool = AssociationPool(self._associate, config.max_associations, config.idle_seconds,
                                     config.uncompressed_conversion)

    @property
    def associations_opened(self) -> int:
        """Associations opened so far (reuse shows as fewer than instances sent)."""
        return self._pool.opened

    async def send(self, payload: bytes, media_type: str) -> str:
        """Forward the instance ``payload`` names; the peer's status text, or a DeliveryError."""
        try:
            ref = InstanceRef.decode(payload)
        except ValueError as exc:
            raise PermanentDelivery(str(exc)) from exc
        return await asyncio.to_thread(self._send, ref)

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.close)

    def _associate(self, contexts: list[Any]) -> Any:
        cfg = self._config
        assoc = self._ae.associate(cfg.host, cfg.port, contexts=contexts, ae_title=cfg.called_ae_title,
                                   tls_args=self._tls)
        if not assoc.is_established:
            return assoc
        tune_association(assoc)
        return StoreLink.detach(assoc, cfg.timeout_seconds) if detachable(assoc) else assoc

    def _send(self, ref: InstanceRef) -> str:
        """Send the primary file, checked while sent; else (gone, tiered, damaged) a verified copy."""
        found = self._source.locate(ref.instance_pk)
        if found is None:
            raise PermanentDelivery(*[f"instance {ref.sop_instance_uid} is no longer in the archive"] * 2)
        direct = self._source.primary_file(found)
        if direct is not None:
            try:
                return self._send_file(direct)
            except SourceDamaged as exc:
                log.warning("forwarding: the primary copy of instance %s is damaged (%s); reading the archive's"
                            " other copy", direct.sop_instance_uid, exc)
        with self._source.verified_copy(found) as copy:
            return self._send_file(copy)

    def _send_file(self, file: InstanceFile) -> str:
        pooled, failed = self._pool.acquire(file.pair, timeout=self._config.timeout_seconds)
        if pooled is None:
            raise _association_failure(failed, self._where, file, self._config.uncompressed_conversion)
        keep = False
        try:
            status = self._store(pooled, file)
            keep = status is not None and "Status" in status
            return _response(status)
        except PermanentDelivery:
            keep = True  # refused by the negotiation or the status: the association itself is fine
            raise
        except (RuntimeError, ValueError, OSError) as exc:  # the association went away under the send
            raise RetryableDelivery(f"C-STORE to {self._where} failed: {type(exc).__name__}: {exc}",
                                    f"C-STORE to {self._where} failed: {type(exc).__name__}") from exc
        finally:
            self._pool.give_back(pooled, keep)

    def _store(self, pooled: PooledAssociation, file: InstanceFile) -> Any:
        """Send ``file`` as stored, or converted where allowed; PermanentDelivery when neither can go."""
        assoc = pooled.assoc
        sop_class, syntax = file.pair
        exact = next((cx for cx in assoc.accepted_contexts
                      if cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax), None)
        if exact is not None and isinstance(assoc, StoreLink):
            return assoc.send_file(file.path, sop_class, file.sop_instance_uid, int(exact.context_id),
                                   pooled.next_message_id(), file.fixity)
        if file.fixity is not None:  # pynetdicom (or conversion) reads the file itself: check it first
            check_file(file.path, file.fixity)
        if exact is not None:
            return assoc.send_c_store(file.path, msg_id=pooled.next_message_id())
        target = self._uncompressed_context(assoc, file) if self._config.uncompressed_conversion else None
        if target is not None and isinstance(assoc, StoreLink):
            ts = UID(target.transfer_syntax[0])
            encoded = encode(_converted(file), ts.is_implicit_VR, ts.is_little_endian, False)
            if encoded is None:
                raise PermanentDelivery(*[f"instance {file.sop_instance_uid} cannot be encoded in {ts.name}"] * 2)
            return assoc.send_bytes(encoded, sop_class, file.sop_instance_uid, int(target.context_id),
                                    pooled.next_message_id())
        if target is not None:
            return assoc.send_c_store(_converted(file), msg_id=pooled.next_message_id())
        accepted = _accepted_syntaxes(assoc, sop_class)
        raise PermanentDelivery(f"{self._where}: {_refusal(accepted, file, self._config.uncompressed_conversion)}")

    @staticmethod
    def _uncompressed_context(assoc: Any, file: InstanceFile) -> Any:
        """An accepted context to send the little-endian uncompressed ``file`` in after conversion, or None."""
        if file.transfer_syntax_uid not in CONVERTIBLE_SYNTAXES:
            return None
        contexts = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == file.sop_class_uid
                    and cx.transfer_syntax[0] in FALLBACK_SYNTAXES]
        return min(contexts, key=lambda cx: FALLBACK_SYNTAXES.index(cx.transfer_syntax[0]), default=None)


def _converted(file: InstanceFile) -> Any:
    """The instance as a Dataset pynetdicom re-encodes in the accepted uncompressed syntax.

    Read whole: conversion is the exception (a peer refusing the stored uncompressed syntax).
    A deflated source is inflated by the read and declared explicit VR little endian.
    """
    ds = dcmread(file.path)
    if file.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


register_destination("dicom", DicomDestination, needs_context=True)
