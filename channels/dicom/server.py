"""One pynetdicom AE serving Verification, Modality Worklist and MPPS.

:func:`start_dicom_server` binds the listener (non-blocking) and returns a
:class:`DicomServer`; :meth:`DicomServer.stop` shuts it down. Settings come from
``dicom`` (AE title, host, port, accepted calling AE titles, TLS, connection
limits and timeouts: :mod:`channels.dicom.listener`), ``worklist`` and ``mpps``.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, _config, evt

from engine.archive.spool_budget import HostBytes, SpoolBounds, SpoolBudget
from engine.config.models import DicomConfig, EngineConfig, TLSConfig
from engine.store.database import Database

from .admission import HostSlots
from .dul_stream import response_stream
from .invalid_store import serve_invalid_stores
from .listener import ConnectionGuard, GuardedServer, HandOff, Limits
from .log_filters import install_log_filters
from .mpps import MppsService, mpps_policy
from .mwl import WorklistService, identifier_refusal
from .mwl_audit import Caller
from .storage import STORAGE_SOP_CLASSES, StorageService, prepare_locations, start_storage
from .store_stream import BUFFER_BYTES as STORE_BUFFER_BYTES
from .store_stream import install_store_stream

#: Verification, Modality Worklist Information Model - FIND, Modality Performed Procedure Step.
SOP_CLASSES = ("1.2.840.10008.1.1", "1.2.840.10008.5.1.4.31", "1.2.840.10008.3.1.2.3.3")

__all__ = [
    "DicomServer",
    "HandedOffServer",
    "configure_pynetdicom_logging",
    "serve_handed_off",
    "spool_bounds",
    "start_dicom_listener",
    "start_dicom_server",
    "tls_context",
    "tune_association",
]


#: Runs once the listener is bound, before it accepts: (bound port, the listener's per-host slots).
BeforeAccepting = Callable[[int, HostSlots], None]


@dataclass(slots=True)
class DicomServer:
    """A running DICOM listener."""

    ae: Any
    server: GuardedServer
    guard: ConnectionGuard
    host: str
    port: int
    ae_title: str

    def stop(self) -> None:
        """Stop accepting associations, cut the connections still open and close the socket."""
        self.guard.stop()
        self.server.shutdown()
        self.ae.shutdown()


def tls_context(cfg: TLSConfig) -> ssl.SSLContext:
    """A server-side TLS context (optionally requiring client certificates)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cfg.ca_file)
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else ssl.CERT_NONE
    return ctx


#: Seconds pynetdicom's DUL reactor sleeps when idle (its default, 1 ms, caps a C-FIND at a few
#: hundred responses/s because every PDU waits one idle turn).
REACTOR_IDLE_SECONDS = 0.0001


def tune_association(assoc: Any) -> None:
    """Disable Nagle on the association's socket and shorten the reactor's idle sleep.

    Small DIMSE PDUs otherwise wait for the peer's delayed ACK (~40 ms each way).
    """
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assoc.dul._run_loop_delay = REACTOR_IDLE_SECONDS


def configure_pynetdicom_logging() -> None:
    """Let pynetdicom build its per-message log text only when its logger would emit it.

    pynetdicom pretty-prints every C-FIND request and response identifier
    (``LOG_REQUEST_IDENTIFIERS``, ``LOG_RESPONSE_IDENTIFIERS``) at INFO, patient names and
    birth dates included, so both are on only when its logger is at DEBUG; it also
    describes every DIMSE message and PDU (the "standard" event handlers) whatever its
    logger's level; at WARNING, the engine's default (:mod:`engine.logs`), that text, about
    a tenth of a response's cost, is thrown away. The handlers are bound when a server
    starts, so this runs before each start.
    """
    logger = logging.getLogger("pynetdicom")
    _config.LOG_RESPONSE_IDENTIFIERS = logger.isEnabledFor(logging.DEBUG)
    _config.LOG_REQUEST_IDENTIFIERS = logger.isEnabledFor(logging.DEBUG)  # patient values: DEBUG only
    _config.LOG_HANDLER_LEVEL = "standard" if logger.isEnabledFor(logging.INFO) else "none"


#: UIDs whose validation is remembered (pynetdicom's ``VALIDATORS["UI"]``): the SOP classes and transfer
#: syntaxes peers propose, and the UIDs of the messages.
UID_VALIDATIONS_KEPT = 4096


def cache_uid_validation() -> None:
    """Remember pynetdicom's UID validation (a pure function of the UID's text) through its documented
    ``_config.VALIDATORS`` hook.

    An A-ASSOCIATE-RQ proposing 128 contexts (``storescu``) names ~500 UIDs, and pynetdicom
    validates each when it decodes the PDU and again when it negotiates: ~15 ms of CPU before
    the A-ASSOCIATE-AC, half of it this validator. Peers propose the same UIDs each time. Once per
    process; a validator put there by someone else is wrapped too.
    """
    current = _config.VALIDATORS["UI"]
    if not getattr(current, "_radbridge_cached", False):
        cached: Any = functools.lru_cache(maxsize=UID_VALIDATIONS_KEPT)(current)
        cached._radbridge_cached = True
        _config.VALIDATORS["UI"] = cached


def _handlers(worklist: WorklistService, mpps: MppsService, storage: StorageService | None,
              bounds: SpoolBounds) -> list[Any]:
    def on_find(event: Any) -> Any:
        refused = identifier_refusal(event.request.Identifier, event.context.transfer_syntax)
        if refused is not None:
            yield refused, None
            return
        requestor = event.assoc.requestor
        caller = Caller(str(requestor.ae_title), str(requestor.address), int(requestor.port or 0))
        stream = response_stream(event)
        if stream is not None:
            yield from worklist.find_encoded(event.identifier, stream, caller)
            return
        outgoing = event.assoc.dul.to_provider_queue  # responses not yet on the wire
        yield from worklist.find(
            event.identifier, lambda: event.is_cancelled, event.context.transfer_syntax, outgoing.qsize, caller
        )

    def on_create(event: Any) -> Any:
        uid = str(event.request.AffectedSOPInstanceUID or "")
        return mpps.create(uid, event.attribute_list, event.assoc.requestor.ae_title)

    def on_set(event: Any) -> Any:
        return mpps.set(str(event.request.RequestedSOPInstanceUID or ""), event.modification_list)

    def on_echo(event: Any) -> int:
        return 0x0000

    storage_classes = frozenset(STORAGE_SOP_CLASSES)

    def on_open(event: Any) -> None:
        tune_association(event.assoc)
        if storage is not None:  # C-STORE data sets straight into the archive's spool
            install_store_stream(event.assoc, storage.answer, storage.primary.incoming, storage_classes, bounds,
                                 storage.spool_meta)
            serve_invalid_stores(event.assoc)  # and those pynetdicom decodes answered even without their UIDs

    return [(evt.EVT_C_FIND, on_find), (evt.EVT_N_CREATE, on_create), (evt.EVT_N_SET, on_set),
            (evt.EVT_C_ECHO, on_echo), (evt.EVT_CONN_OPEN, on_open)]  # fmt: skip


#: The Maximum Length Received this AE announces (PS3.8 D.1.1). pynetdicom's default (16,382) cuts a
#: 512 KB image into 32 PDUs, each a few reads, writes and GIL hand-overs on the storage path
#: (channels.dicom.store_stream, which reads any PDU in pieces of at most its buffer, so the figure
#: does not bound its memory); other messages are small whatever the limit.
MAXIMUM_PDU_BYTES = STORE_BUFFER_BYTES


def _application_entity(services: DicomConfig) -> Any:
    ae = AE(ae_title=services.ae_title)
    ae.maximum_associations = services.max_associations
    ae.maximum_pdu_size = MAXIMUM_PDU_BYTES
    ae.acse_timeout = services.artim_timeout_seconds  # pynetdicom's ARTIM timer (PS3.8 9.1.5)
    ae.network_timeout = services.idle_timeout_seconds
    for sop in SOP_CLASSES:
        ae.add_supported_context(sop)
    ae.require_called_aet = True  # associations addressed to another AE title are rejected
    if services.accepted_calling_ae_titles:
        ae.require_calling_aet = list(services.accepted_calling_ae_titles)
    return ae


def spool_bounds(config: EngineConfig, budget: SpoolBudget | None = None) -> SpoolBounds:
    """The C-STORE receive's bounds; ``budget``: the per-host ledger (default: this process's own)."""
    ledger = budget if budget is not None else HostBytes(config.dicom.max_spool_bytes_per_host)
    return SpoolBounds(config.dicom.max_instance_bytes, config.archive.min_free_bytes, ledger)


def _services(config: EngineConfig, db: Database, on_queued: Callable[[], None] | None,
              prepare: bool, budget: SpoolBudget | None = None) -> tuple[Any, list[Any]]:
    """The AE with every supported context and its event handlers (worklist, MPPS, C-STORE if on).

    ``prepare``: empty the archive's spool first (only the process that owns the archive at start:
    a worker started later would remove what the others are receiving). ``budget``: the per-host
    spool ledger (a receive worker's grants from the engine process; default: this process's own).
    """
    ae = _application_entity(config.dicom)
    worklist = WorklistService.from_config(db, config.worklist, config.dicom.ae_title)
    mpps = MppsService(db, mpps_policy(config.mpps))
    bounds = spool_bounds(config, budget)
    storage = start_storage(ae, config, db, on_queued, prepare, bounds.budget) if config.archive.enabled else None
    handlers = _handlers(worklist, mpps, storage, bounds)
    if storage is not None:  # C-STORE: every storage SOP class (channels.dicom.storage)
        handlers.append((evt.EVT_C_STORE, storage.on_store))
    return ae, handlers


def _guard(services: DicomConfig, slots: HostSlots | None = None) -> ConnectionGuard:
    limits = Limits(services.max_associations_per_host, services.artim_timeout_seconds, services.idle_timeout_seconds)
    return ConnectionGuard(limits, slots=slots)


def _serve(ae: Any, services: DicomConfig, handlers: list[Any], guard: ConnectionGuard,
           handoff: HandOff | None = None, before_accepting: BeforeAccepting | None = None) -> DicomServer:
    server = ae.make_server(
        (services.host, services.port),
        evt_handlers=handlers,
        ssl_context=tls_context(services.tls) if services.tls else None,
        server_class=GuardedServer,
        guard=guard,
        handoff=handoff,
    )
    bound = int(server.server_address[1])
    if before_accepting is not None:
        try:
            before_accepting(bound, guard.slots)
        except BaseException:
            server.server_close()
            raise
    ae._servers.append(server)  # as AE.start_server does: AE.shutdown and server.shutdown expect it there
    guard.start()
    threading.Thread(target=server.serve_forever, name="DicomAcceptor", daemon=True).start()
    return DicomServer(ae, server, guard, services.host, bound, services.ae_title)


def start_dicom_server(config: EngineConfig, db: Database, on_queued: Callable[[], None] | None = None) -> DicomServer:
    """Start the worklist + MPPS (+ C-STORE) listener in its own threads; port 0 picks a free port.

    ``on_queued`` is called (from an association's thread) when a stored image was queued for forwarding.
    """
    configure_pynetdicom_logging()
    cache_uid_validation()
    install_log_filters()
    ae, handlers = _services(config, db, on_queued, prepare=True)
    return _serve(ae, config.dicom, handlers, _guard(config.dicom))


def start_dicom_listener(config: EngineConfig, handoff: HandOff, before_accepting: BeforeAccepting) -> DicomServer:
    """The listening socket and admission only: each admitted connection goes to ``handoff``
    (:mod:`channels.dicom.receive_pool`). The archive's spool is emptied first; then the socket is
    bound and ``before_accepting(port, slots)`` runs (the workers start) before the first accept."""
    configure_pynetdicom_logging()
    cache_uid_validation()
    install_log_filters()
    if config.archive.enabled:
        prepare_locations(config)
    ae = _application_entity(config.dicom)
    return _serve(ae, config.dicom, [], _guard(config.dicom), handoff, before_accepting)


@dataclass(slots=True)
class HandedOffServer:
    """A worker process's AE: serves connections accepted and admitted by the engine process.

    No socket listens here. ``slots`` reports each connection's end to the engine process
    (:class:`~channels.dicom.admission.HostSlots` ``give_back``).
    """

    server: GuardedServer
    refuser: GuardedServer
    guard: ConnectionGuard

    def serve(self, sock: socket.socket, client_address: Any, host: str, over_limit: bool) -> None:
        """Run one connection in a thread of its own (its slot already taken by the engine process)."""
        self.guard.admit(host)
        server = self.refuser if over_limit else self.server
        threading.Thread(target=server.serve_connection, args=(sock, client_address, host), daemon=True).start()

    def stop(self) -> None:
        """Cut every connection, abort the associations still running, close the servers."""
        self.guard.stop()
        for server in (self.server, self.refuser):
            for assoc in server.ae.active_associations:
                assoc.abort()
            server.server_close()


def _unbound(ae: Any, config: DicomConfig, handlers: list[Any], guard: ConnectionGuard, port: int) -> GuardedServer:
    """A GuardedServer whose own listening socket is closed at once (pynetdicom's server always binds one)."""
    server: GuardedServer = ae.make_server(
        (config.host, 0), evt_handlers=handlers, server_class=GuardedServer, guard=guard,
        ssl_context=tls_context(config.tls) if config.tls else None,
    )  # fmt: skip
    server.server_close()
    server.server_address = (config.host, port)  # the acceptor's address as peers see it
    return server


def serve_handed_off(config: EngineConfig, db: Database, on_queued: Callable[[], None] | None,
                     slots: HostSlots, port: int, budget: SpoolBudget) -> HandedOffServer:
    """The AE of a receive worker: every service, on connections handed over by the engine process.

    A connection flagged over the total limit goes to an AE that rejects every association
    (A-ASSOCIATE-RJ transient, local limit exceeded: pynetdicom's answer, PS3.8 7.1.1.8), set
    through pynetdicom's private ``_maximum_associations`` because its setter refuses 0.
    """
    configure_pynetdicom_logging()
    cache_uid_validation()
    install_log_filters()
    services = config.dicom
    guard = _guard(services, slots)
    ae, handlers = _services(config, db, on_queued, prepare=False, budget=budget)
    refusing = _application_entity(services)
    refusing._maximum_associations = 0
    served = HandedOffServer(_unbound(ae, services, handlers, guard, port),
                             _unbound(refusing, services, [], guard, port), guard)
    guard.start()
    return served
