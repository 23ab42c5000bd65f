"""A DICOM receive worker process: runs the associations the engine process hands it.

Started by :class:`~channels.dicom.receive_pool.ReceivePool` as
``python -m channels.dicom.receive_worker FD``: ``FD`` is its end of the link (a Unix
``SOCK_SEQPACKET`` socket), standard input carries the engine's validated configuration, the
listener's port and the worker's index (pickled by the engine process, its parent). The worker
opens the same database (no migration, no WAL checkpointer: the engine process runs those) and
serves every DICOM service on the connections it receives (:func:`channels.dicom.server.serve_handed_off`):
the storage, index and commit decisions are the engine's own (:mod:`channels.dicom.storage`,
:mod:`engine.domain.ingest`, :class:`engine.store.database.Writer`), so an image is durable and
committed before its 0x0000 here as in the engine process. The protocol on the link is described
in :mod:`channels.dicom.receive_pool`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import sys
import threading

from engine.config.models import EngineConfig
from engine.logs import configure_logging
from engine.store.database import Database

from .admission import HostSlots
from .server import HandedOffServer, serve_handed_off
from .spool_grants import GrantedBytes, kept_bytes

__all__ = ["EngineLink", "ReportedSlots", "main"]

log = logging.getLogger(__name__)

#: Notices to the engine process are sent at most this often (they coalesce meanwhile).
NOTIFY_SECONDS = 0.02
#: The engine process admits connections; a worker counts them only to report each one's end.
_UNLIMITED = 1 << 30


class EngineLink:
    """This worker's end of the link to the engine process (thread-safe sends)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._notify_loop, name="engine-link-notify", daemon=True).start()

    def send(self, text: str) -> None:
        """Send one message; a link that is gone is ignored (the engine process stops us)."""
        with self._send_lock:
            try:
                self.sock.send(text.encode())
            except OSError:
                log.debug("engine link gone", exc_info=True)

    def queued(self) -> None:
        """Rows were queued for forwarding: the engine's outbox worker should look."""
        self._note("Q")

    def committed(self) -> None:
        """A transaction committed here: the engine's commit listeners should look."""
        self._note("K")

    def _note(self, kind: str) -> None:
        with self._pending_lock:
            self._pending.add(kind)
        self._wake.set()

    def _notify_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._pending_lock:
                kinds, self._pending = "".join(sorted(self._pending)), set()
            if kinds:
                self.send(f"notify {kinds}")
            threading.Event().wait(NOTIFY_SECONDS)


class ReportedSlots(HostSlots):
    """Slots counted here for the guard's bookkeeping; each one given back is reported to the engine.

    When a host's last connection here is gone, its unused spool grant goes back too.
    """

    def __init__(self, link: EngineLink, grants: GrantedBytes) -> None:
        super().__init__(_UNLIMITED)
        self._link = link
        self._grants = grants

    def give_back(self, host: str) -> None:
        super().give_back(host)
        self._link.send(f"closed {host}")
        if not self.held(host):
            self._grants.forget(host)


def _serve(link: EngineLink, served: HandedOffServer, grants: GrantedBytes) -> None:
    """Take connections (and answers to spool grant requests) until the engine closes its end of the link."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(link.sock, 4096, 4)
        except OSError:
            return
        if not data:
            for fd in fds:
                os.close(fd)
            return
        if len(fds) != 1:  # not a hand-off: an answer to a grant request, or nothing
            for fd in fds:
                os.close(fd)
            if data.startswith(b"granted "):
                grants.answer(data.decode())
            continue
        request = json.loads(data)
        sock = socket.socket(fileno=fds[0])
        served.serve(sock, tuple(request["address"]), str(request["host"]), bool(request["over"]))


def run(fd: int) -> int:
    """Serve until the engine process closes the link (or dies); 0 after a clean stop."""
    config, port, index = pickle.load(sys.stdin.buffer)  # written by our parent, the engine process
    assert isinstance(config, EngineConfig)
    # Ctrl-C and a service stop reach the whole process group: the engine process decides when
    # workers stop (end of stream on the link; SIGKILL ends one at once).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a service manager sends it to the whole group
    configure_logging(config.logging.level, config.logging.format)
    link = EngineLink(socket.socket(fileno=fd))
    db = Database(config.database_url(), config.database.sqlite_synchronous, config.database.pool_size,
                  config.database.sqlite_page_size, checkpoint=False, write_lock=True,
                  application_name=f"radbridge receive worker {index}",
                  answer_timeout=config.database.answer_timeout_seconds)
    bounds = config.dicom
    grants = GrantedBytes(link.send, kept_bytes(bounds.max_spool_bytes_per_host, bounds.max_instance_bytes,
                                                 bounds.receive_processes))
    served = serve_handed_off(config, db, link.queued, ReportedSlots(link, grants), port, grants)
    db.writer.add_commit_listener(link.committed)
    log.debug("receive worker %d ready (pid %d)", index, os.getpid())
    link.send("ready")
    try:
        _serve(link, served, grants)
    finally:
        served.stop()
        db.close()
    return 0


def main() -> None:
    """Entry point: ``python -m channels.dicom.receive_worker FD``."""
    sys.exit(run(int(sys.argv[1])))


if __name__ == "__main__":
    main()
