"""DICOM associations run in worker processes: the engine process keeps the socket and the limits.

One engine process is bound by the GIL: four storing associations cost more CPU an image than
one and no second core helps (docs/performance.md). With ``dicom.receive_processes: N`` (N >= 1)
the engine process still listens and admits every connection
(:class:`~channels.dicom.listener.GuardedServer`: ``max_associations_per_host`` per calling host,
``max_associations`` in all), then hands the accepted socket to one of N worker processes
(:mod:`channels.dicom.receive_worker`) over a Unix ``SOCK_SEQPACKET`` pair (``SCM_RIGHTS``), and
closes its own copy. The worker runs the whole association as the engine process would: TLS
handshake, A-ASSOCIATE (calling-AE allow-list), C-ECHO, worklist C-FIND, MPPS, C-STORE (durable
and committed before 0x0000) on the same database and archive.

Messages on each pair, one datagram each:

* engine -> worker: ``{"host", "address", "over"}`` (JSON) with the connection's descriptor;
  ``over``: the connection is over ``max_associations`` in all, the worker answers A-ASSOCIATE-RJ.
  End of stream: stop (finish nothing new, cut the connections, close the store, exit).
* engine -> worker: ``granted <id> <host> <bytes> 1|0``, the answer to a spool grant request.
* worker -> engine: ``ready``; ``closed <host>`` (a connection is gone: the host's slot is free);
  ``grant <id> <host> <bytes>`` (spool bytes for a C-STORE being received, from the host's
  ``dicom.max_spool_bytes_per_host``, answered ``granted``) and ``return <host> <bytes>``
  (:mod:`channels.dicom.spool_grants`);
  ``notify <kinds>`` (``Q``: rows were queued for forwarding, wake the outbox worker; ``K``: the
  worker committed, wake the commit listeners such as the FHIR projector).

A worker is chosen by the fewest open connections. One that ends (crash, ``kill -9``) loses its
connections with it (the kernel closes them: each peer sees its association end, never a success
that was not committed); the engine gives their slots back, logs it and starts a new worker. If
the engine process dies, each worker sees end of stream and stops. No worker outlives
:meth:`ReceivePool.stop`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.archive.spool_budget import HostBytes
from engine.config.models import EngineConfig
from engine.errors import ConfigError

from .admission import HostSlots

__all__ = ["READY_SECONDS", "ReceivePool", "WorkerHandle"]

log = logging.getLogger(__name__)

#: How long a worker may take to import, open the store and report ready.
READY_SECONDS = 120.0
#: How long :meth:`ReceivePool.stop` waits for a worker to finish before it is killed.
STOP_SECONDS = 15.0
#: A hand-off blocked this long (a worker that stopped reading) fails: the connection is closed.
SEND_SECONDS = 5.0
#: A worker that keeps ending waits this long at most before the next start.
MAX_BACKOFF_SECONDS = 30.0


@dataclass(eq=False)
class WorkerHandle:
    """One worker process and what the engine knows of it."""

    index: int
    proc: subprocess.Popen[bytes]
    link: socket.socket
    held: Counter[str] = field(default_factory=Counter)  # open connections per calling host
    granted: Counter[str] = field(default_factory=Counter)  # spool bytes granted per calling host
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def open_connections(self) -> int:
        return sum(self.held.values())


class ReceivePool:
    """``count`` worker processes serving the connections the engine process admitted.

    ``on_queued`` and ``on_committed`` run in a reader thread when a worker reports queued rows
    or a commit; they must be cheap and thread-safe.
    """

    def __init__(self, config: EngineConfig, count: int, on_queued: Callable[[], None],
                 on_committed: Callable[[], None]) -> None:
        self._config = config
        self._count = count
        self._on_queued = on_queued
        self._on_committed = on_committed
        self._lock = threading.Lock()
        self._workers: list[WorkerHandle | None] = [None] * count
        self._slots: HostSlots | None = None
        self._port = 0
        self._stopping = threading.Event()
        self._failures = [0] * count
        self.spool_bytes = HostBytes(config.dicom.max_spool_bytes_per_host)  # every worker's grants
        self.restarts = 0  # workers started again after one ended (status, tests)

    def start(self, port: int, slots: HostSlots) -> None:
        """Start every worker and wait until each is ready; ``slots`` are the listener's per-host slots.

        Raises ConfigError (every worker stopped) when one cannot start.
        """
        self._port, self._slots = port, slots
        try:
            for index in range(self._count):
                self._workers[index] = self._spawn(index)
            for handle in self.workers():
                self._await_ready(handle)
        except BaseException:
            self.stop()
            raise
        log.info("DICOM associations run in %d receive worker process(es): pids %s", self._count,
                 ", ".join(str(h.pid) for h in self.workers()))

    def workers(self) -> list[WorkerHandle]:
        """The current worker processes."""
        with self._lock:
            return [h for h in self._workers if h is not None]

    def hand_off(self, sock: socket.socket, client_address: Any, host: str, over_limit: bool) -> None:
        """Give an admitted connection (its host's slot taken) to the least busy ready worker.

        The engine's copy of the socket is closed either way; with no worker ready, or a send that
        fails, the connection is closed and its slot given back.
        """
        message = json.dumps({"host": host, "address": list(client_address[:2]), "over": over_limit}).encode()
        try:
            with self._lock:
                ready = [h for h in self._workers if h is not None and h.ready.is_set()]
                handle = min(ready, key=WorkerHandle.open_connections) if ready else None
                if handle is not None:
                    socket.send_fds(handle.link, [message], [sock.fileno()])
                    handle.held[host] += 1
            if handle is None:
                log.warning("DICOM connection from %s closed: no receive worker is ready", host)
                self._give_back(host)
        except OSError as exc:
            log.warning("DICOM connection from %s closed: handing it to a receive worker failed: %s", host, exc)
            self._give_back(host)
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def stop(self) -> None:
        """Stop every worker (end of stream on its link; killed after STOP_SECONDS) and wait for it."""
        self._stopping.set()
        for handle in self.workers():
            with contextlib.suppress(OSError):
                handle.link.shutdown(socket.SHUT_WR)
        for handle in self.workers():
            try:
                handle.proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("receive worker %d (pid %d) did not stop in %.0f s: killed", handle.index,
                            handle.pid, STOP_SECONDS)
                handle.proc.kill()
                handle.proc.wait()
            if handle.reader is not None and handle.reader is not threading.current_thread():
                handle.reader.join(timeout=5)
            with contextlib.suppress(OSError):
                handle.link.close()

    def _spawn(self, index: int) -> WorkerHandle:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "channels.dicom.receive_worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.PIPE,
            )
        finally:
            theirs.close()
        assert proc.stdin is not None
        # The worker's settings: the engine's own validated configuration (a trusted pipe to its child).
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(pickle.dumps((self._config, self._port, index)))
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        ours.settimeout(SEND_SECONDS)
        handle = WorkerHandle(index, proc, ours)
        handle.reader = threading.Thread(target=self._read, args=(handle,), name=f"dicom-receive-{index}", daemon=True)
        handle.reader.start()
        return handle

    def _await_ready(self, handle: WorkerHandle) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while not handle.ready.wait(0.05):
            code = handle.proc.poll()
            if code is not None or time.monotonic() > deadline:
                why = f"exited with code {code}" if code is not None else f"not ready in {READY_SECONDS:.0f} s"
                raise ConfigError([f"dicom.receive_processes: receive worker {handle.index} {why}"
                                   " (its log lines above say why)"])

    def _read(self, handle: WorkerHandle) -> None:
        """The worker's reports, until its end of the link closes (it stopped or died)."""
        while True:
            try:
                data = handle.link.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            self._report(handle, data)
        self._ended(handle)

    def _report(self, handle: WorkerHandle, data: bytes) -> None:
        kind, _, rest = data.decode("utf-8", "replace").partition(" ")
        if kind == "ready":
            handle.ready.set()
            with self._lock:
                self._failures[handle.index] = 0
        elif kind == "closed":
            with self._lock:
                if handle.held[rest] > 0:
                    handle.held[rest] -= 1
                    if not handle.held[rest]:
                        del handle.held[rest]
                else:
                    return
            self._give_back(rest)
        elif kind in ("grant", "return"):
            self._spool_grant(handle, kind, rest)
        elif kind == "notify":
            if "Q" in rest:
                self._on_queued()
            if "K" in rest:
                self._on_committed()

    def _spool_grant(self, handle: WorkerHandle, kind: str, rest: str) -> None:
        """A worker asks for spool bytes of a host (answered at once), or gives some back."""
        if kind == "return":
            host, count = rest.split()
            with self._lock:
                back = min(int(count), handle.granted[host])
                handle.granted[host] -= back
                if not handle.granted[host]:
                    del handle.granted[host]
            self.spool_bytes.release(host, back)
            return
        ident, host, count = rest.split()
        ok = self.spool_bytes.reserve(host, int(count))
        with self._lock:
            if ok:
                handle.granted[host] += int(count)
            try:
                handle.link.send(f"granted {ident} {host} {count} {int(ok)}".encode())
            except OSError:  # the worker is gone: _ended gives its grants back
                log.debug("grant answer to receive worker %d failed", handle.index, exc_info=True)

    def _ended(self, handle: WorkerHandle) -> None:
        """A worker's link closed: free its connections' slots; start a new worker unless stopping."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            handle.proc.wait(timeout=STOP_SECONDS)
        with self._lock:
            lost, handle.held = handle.held, Counter()
            granted, handle.granted = handle.granted, Counter()
        for host, count in granted.items():
            self.spool_bytes.release(host, count)
        for host, count in lost.items():
            for _ in range(count):
                self._give_back(host)
        if self._stopping.is_set():
            return
        code = handle.proc.returncode
        log.error("receive worker %d (pid %d) ended (exit code %s) with %d connection(s): they were cut;"
                  " starting a new one", handle.index, handle.pid, code, sum(lost.values()))
        self._restart(handle.index)

    def _restart(self, index: int) -> None:
        with self._lock:
            self._failures[index] += 1
            delay = min(2.0 ** (self._failures[index] - 1) - 1, MAX_BACKOFF_SECONDS)
        if delay > 0 and self._stopping.wait(delay):
            return
        with self._lock:
            if self._stopping.is_set():
                return
            handle = self._spawn(index)
            self._workers[index] = handle
            self.restarts += 1
        with self._lock:  # a stop that began meanwhile must see it
            stopping = self._stopping.is_set()
        if stopping:
            with contextlib.suppress(OSError):
                handle.link.shutdown(socket.SHUT_WR)

    def _give_back(self, host: str) -> None:
        if self._slots is not None:
            self._slots.give_back(host)
