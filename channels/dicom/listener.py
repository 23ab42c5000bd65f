"""The DICOM listener's TCP side: admission per calling host, ARTIM, prompt release (PS3.8 9.1.5).

pynetdicom's own server leaves three holes that let a few idle or half-negotiated
connections block the worklist and MPPS for everybody:

* a connection whose peer sent part of a PDU and nothing more blocks its reactor
  thread in ``recv`` for ever, so pynetdicom's ARTIM timer is never checked and the
  association thread waits on it (its slot in ``maximum_associations`` stays taken);
* a connection whose peer vanished before its A-ASSOCIATE-RQ keeps its association
  thread (and slot) until the ACSE timeout, though nothing is left to wait for;
* with TLS the handshake runs in the accepting thread, so one silent client stops
  every other from connecting.

:class:`GuardedServer` accepts each connection itself: it refuses (closes at once)
a connection from a host that already holds ``max_associations_per_host``, does the
TLS handshake in the connection's own thread under the ARTIM timeout, gives the
socket a stall timeout (``idle_timeout_seconds`` per ``recv``/``send``), and hands
it to pynetdicom. :class:`ConnectionGuard` then watches every connection until its
peer is gone: it cuts (``shutdown``) a connection that outstays ARTIM in Sta2 or
Sta13 (:class:`~channels.dicom.admission.ArtimClock`), or that is still open
:data:`IDLE_GRACE_SECONDS` after ``idle_timeout_seconds`` without a complete PDU
(pynetdicom's own abort then is stuck behind a reader blocked on a PDU that trickles
in a byte at a time), and when a connection closes
before its A-ASSOCIATE-RQ it wakes the association thread waiting for that request,
so the slot is free at once.

**pynetdicom internals** used here (checked against 3.0, as in
:mod:`channels.dicom.dul_stream`): ``RequestHandler._create_association``,
``assoc.dul.state_machine.current_state``, ``assoc.dul.socket.socket``,
``assoc.dul.to_user_queue`` (a ``None`` there is what the acceptor thread's wait
for the A-ASSOCIATE-RQ returns on timeout), ``assoc.dul._idle_timer`` (its
``remaining`` and ``timeout``), ``AE._servers``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pynetdicom
from pynetdicom import evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from .admission import ArtimClock, HostSlots, RefusalReport
from .dul_stream import TESTED_VERSIONS
from .sop_class_check import refuse_foreign_sop_classes

__all__ = ["ConnectionGuard", "Contexts", "GuardedServer", "HandOff", "Limits"]

log = logging.getLogger(__name__)

#: Seconds between the watchdog's looks at the open connections.
SWEEP_SECONDS = 0.2
#: An association still open this long after its idle timer expired (pynetdicom aborts it at once unless its
#: reader is blocked on a PDU that trickles in) is cut by the watchdog.
IDLE_GRACE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Limits:
    """``dicom:`` connection settings."""

    per_host: int
    artim_seconds: float
    idle_seconds: float


@dataclass(slots=True)
class _Connection:
    host: str
    assoc: Any
    artim: ArtimClock


def _state(assoc: Any) -> str:
    return str(assoc.dul.state_machine.current_state)


def _idle_for(assoc: Any) -> float:
    """Seconds since the association's idle timer (``dicom.idle_timeout_seconds``, no PDU) expired; <= 0 if not."""
    timer: Any = getattr(assoc.dul, "_idle_timer", None)
    remaining = getattr(timer, "remaining", None)
    return -float(remaining) if isinstance(remaining, int | float) and getattr(timer, "timeout", None) else 0.0


def _raw_socket(assoc: Any) -> socket.socket | None:
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    return sock if isinstance(sock, socket.socket) else None


def cut(sock: socket.socket | None) -> None:
    """Shut the connection down under whatever thread is blocked on it (it sees end of stream).

    ``socket.socket.shutdown`` even for a TLS socket: ``SSLSocket.shutdown`` would drop
    the TLS object under a reader. The descriptor is closed by its owner, never here.
    """
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed or never connected
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class ConnectionGuard:
    """Every admitted connection from admission until its peer is gone."""

    def __init__(self, limits: Limits, clock: Any = time.monotonic, slots: HostSlots | None = None) -> None:
        self.limits = limits
        self.slots = slots if slots is not None else HostSlots(limits.per_host)
        self.refusals = RefusalReport()
        self.over_limit = RefusalReport()  # connections answered A-ASSOCIATE-RJ: every slot in all taken
        self._clock = clock
        self._open: dict[int, _Connection] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="DicomConnectionGuard", daemon=True)

    def start(self) -> None:
        """Start the watchdog thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the watchdog and cut every connection still open."""
        self._stopped.set()
        self._thread.join(timeout=5)
        with self._lock:
            conns = list(self._open.values())
        for conn in conns:
            cut(_raw_socket(conn.assoc))

    def admit(self, host: str) -> bool:
        """Take a slot for a new connection from ``host``; False if the host has none left."""
        return self.slots.take(host)

    def attach(self, host: str, assoc: Any) -> None:
        """Watch ``assoc``, the association of a connection admitted for ``host``."""
        with self._lock:
            self._open[id(assoc)] = _Connection(host, assoc, ArtimClock(self.limits.artim_seconds))

    def open_count(self) -> int:
        """Connections admitted and not yet gone."""
        return self.slots.total()

    def on_close(self, event: Any) -> None:
        """``EVT_CONN_CLOSE``: free the slot; wake the thread still waiting for an A-ASSOCIATE-RQ."""
        assoc = event.assoc
        if assoc.is_acceptor and _state(assoc) == "Sta2":
            assoc.dul.to_user_queue.put(None)
        self._release(assoc)

    def _release(self, assoc: Any) -> None:
        with self._lock:
            conn = self._open.pop(id(assoc), None)
        if conn is not None:
            self.slots.give_back(conn.host)

    def sweep(self) -> None:
        """One look at every connection: cut those past ARTIM or idle past the grace, release those whose
        thread ended."""
        now = self._clock()
        with self._lock:
            conns = list(self._open.values())
        for conn in conns:
            if conn.assoc.ident is not None and not conn.assoc.is_alive():
                self._release(conn.assoc)
            elif conn.artim.expired(_state(conn.assoc), now):
                log.info("DICOM connection from %s closed: ARTIM expired in %s", conn.host, conn.artim.state)
                cut(_raw_socket(conn.assoc))
            elif _idle_for(conn.assoc) > IDLE_GRACE_SECONDS:
                # pynetdicom's abort at dicom.idle_timeout_seconds (logged then) did not end it: its reader
                # is blocked on a PDU that never completes (a peer sending a byte now and then).
                log.debug("DICOM connection from %s cut: idle past dicom.idle_timeout_seconds", conn.host)
                cut(_raw_socket(conn.assoc))

    def _watch(self) -> None:
        while not self._stopped.wait(SWEEP_SECONDS):
            try:
                self.sweep()
            except Exception:  # the watchdog must outlive any one connection's oddity
                log.exception("DICOM connection watchdog")


class _Handler(RequestHandler):
    """Builds the association but leaves starting it to :meth:`GuardedServer.serve_connection`."""

    assoc: Any = None

    def handle(self) -> None:
        self.assoc = self._create_association()


class Contexts(list[Any]):
    """The server's presentation contexts, copied cheaply for each association.

    pynetdicom gives every association ``deepcopy(server.contexts)``: with every storage SOP
    class and every transfer syntax (~190 contexts, ~8,400 UIDs) that is ~80 ms of one core an
    association, most of it pydicom validating each UID it rebuilds, spent before the
    A-ASSOCIATE-AC (a modality that opens an association an image waits that long each time).
    A context's attributes are immutable values (UIDs, ints, bools, None) and lists of them, so
    a copy that gives each context its own attribute dict and its own lists is the same copy,
    without rebuilding the UIDs.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> Contexts:
        return Contexts(_context_copy(cx) for cx in self)


def _context_copy(cx: Any) -> Any:
    new = copy.copy(cx)
    new.__dict__ = {key: list(value) if isinstance(value, list) else value for key, value in vars(cx).items()}
    return new


#: Takes an admitted connection to another process: (socket, client address, host, over the total
#: limit). It owns the socket from then on, and gives the host's slot back when the connection is gone.
HandOff = Callable[[socket.socket, Any, str, bool], None]


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with :class:`ConnectionGuard` admission (see the module docstring).

    With ``handoff`` every admitted connection goes to it (:mod:`channels.dicom.receive_pool`) instead
    of a thread of this process; one over ``maximum_associations`` in all is flagged so that the
    process serving it answers A-ASSOCIATE-RJ (local limit exceeded), as pynetdicom does here.
    """

    def __init__(self, *args: Any, guard: ConnectionGuard, handoff: HandOff | None = None, **kwargs: Any) -> None:
        if not pynetdicom.__version__.startswith(TESTED_VERSIONS):
            log.warning("pynetdicom %s: the DICOM listener was checked against %s only",
                        pynetdicom.__version__, ", ".join(TESTED_VERSIONS))  # fmt: skip
        self.guard = guard
        self.handoff = handoff
        kwargs["request_handler"] = _Handler
        super().__init__(*args, **kwargs)
        self.contexts = Contexts(self.contexts)
        self.bind(evt.EVT_CONN_CLOSE, guard.on_close)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept without the TLS handshake (it runs in the connection's thread)."""
        assert self.socket is not None
        return self.socket.accept()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Admit or refuse the connection; an admitted one is opened in its own thread."""
        host = str(client_address[0])
        if not self.guard.admit(host):
            count = self.guard.refusals.note(host, time.monotonic())
            if count is not None:
                log.warning(
                    "DICOM connection from %s refused (%d since the last report): it holds %d connections"
                    " (dicom.max_associations_per_host)", host, count, self.guard.limits.per_host,
                )  # fmt: skip
            self.shutdown_request(request)
            return
        over = self.guard.open_count() > self.ae.maximum_associations
        if over:
            count = self.guard.over_limit.note(host, time.monotonic())
            if count is not None:
                log.warning(
                    "DICOM connection from %s answered A-ASSOCIATE-RJ (%d since the last report): %d connections"
                    " open in all (dicom.max_associations %d)", host, count, self.guard.open_count() - 1,
                    self.ae.maximum_associations,
                )  # fmt: skip
        if self.handoff is not None:
            self.handoff(request, client_address, host, over)
            return
        thread = threading.Thread(target=self.serve_connection, args=(request, client_address, host), daemon=True)
        thread.start()

    def serve_connection(self, request: socket.socket, client_address: Any, host: str) -> None:
        """Run an admitted connection (its slot taken) in this thread: TLS handshake, then its association."""
        limits = self.guard.limits
        try:
            if self.ssl_context is not None:
                request = self._handshake(request, limits.artim_seconds)
            request.settimeout(limits.idle_seconds)
            assoc = _Handler(request, client_address, self).assoc
        except (OSError, ValueError) as exc:
            log.info("DICOM connection from %s closed before association: %s", host, exc)
            self.guard.slots.give_back(host)
            self.shutdown_request(request)
            return
        refuse_foreign_sop_classes(assoc)
        self.guard.attach(host, assoc)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": client_address})
        assoc.start()

    def _handshake(self, request: socket.socket, timeout: float) -> ssl.SSLSocket:
        """The TLS server handshake, bounded by ``timeout`` (the wrapped socket owns the descriptor)."""
        assert self.ssl_context is not None
        tls = self.ssl_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            tls.settimeout(timeout)
            tls.do_handshake()
        except OSError:
            tls.close()
            raise
        return tls
