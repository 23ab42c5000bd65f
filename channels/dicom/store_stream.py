"""C-STORE data sets read from the socket straight into the spool file, beside pynetdicom's DUL.

pynetdicom receives a 512 KB C-STORE as ~32 P-DATA-TF PDUs, and for each one reads
the socket 4 KB at a time, copies the PDU three times (bytes, PDU object,
primitive), runs the state machine, and writes and flushes the fragment; the
association's own thread then polls for the finished message every millisecond
before the handler runs. That is ~5 ms an image, more than the durable store
itself. :class:`StoreStream` replaces the DUL's PDU reader on one association:

* a P-DATA-TF PDU received in Sta6 (association established) is read into a
  reusable buffer, never beyond its own end (so the reactor's ``select`` still
  sees whatever follows), and split into PDVs (:mod:`channels.dicom.pdv`);
* a complete C-STORE-RQ command (:mod:`channels.dicom.dimse_command`) on an
  accepted storage context starts a spool file in the primary location's
  ``.incoming`` holding the File Meta Information radbridge stores
  (:func:`~engine.archive.part10.encode_file_meta`); its data set fragments are
  appended as they arrive (and counted), so the spool *is* the archive file and
  :meth:`~channels.dicom.storage.StorageService.store` only has to hash, fsync and
  link it (:attr:`~channels.dicom.storage.StoreRequest.streamed`; the hash runs
  beside the store's checks, :class:`~engine.archive.flush.HashAhead`, not here
  between PDU reads);
* the last fragment runs that store in this thread, and the C-STORE-RSP is queued
  as a ready-made P-DATA primitive on the DUL's own queue (as
  :mod:`channels.dicom.dul_stream` does for C-FIND), so the state machine still
  sends it;
* everything else (association PDUs, other states, every other command and its
  data set) is handed to pynetdicom exactly as its own reader would;
* on an association with only storage (and Verification) contexts, the association's
  own thread, which then has next to nothing to do, turns every 5 ms instead of every
  millisecond (:class:`_AssociationClock`).

The spool is bounded (:mod:`engine.archive.spool_budget`): a data set past
``dicom.max_instance_bytes`` aborts the association; its bytes are taken from the calling host's
``dicom.max_spool_bytes_per_host`` share in :data:`RESERVE_STEP_BYTES` steps, and under
``archive.min_free_bytes`` free (looked at when the command arrives and every
:data:`FREE_CHECK_BYTES`) the store is refused: its spool removed, the rest of its data set read and
dropped, 0xA700 answered once it ends (not aborted: an SCP can stop a sender mid-data-set only by
A-ABORT, which would cost it the association, every image queued on it and the status; what is read
on is written nowhere, and a data set that never ends is aborted at ``dicom.max_instance_bytes``).
The DUL's idle timer (``dicom.idle_timeout_seconds``) is
restarted after each PDU read here: pynetdicom restarts it only when this reader returns, which
for a whole data set can be minutes; it is stopped while the store runs (the peer waits for our
answer then: a database slow to answer, a long fsync, are not its idleness).

Write errors on the spool (disk full) are recorded, never raised
(:class:`~channels.dicom.spool.SpoolFile`), and answered 0xA700. A PDV that
overruns its PDU, or a command arriving before the previous data set ended,
or a data set fragment on another presentation context than its command's (PS3.8
9.3.5.1), is a protocol error: the association is aborted (Evt19), as pynetdicom
does for an undecodable PDU, as is an unknown PDU type (a peer that speaks HTTP or TLS to
this port). After a protocol error whatever else the peer sends is read and dropped unparsed
until the connection closes: one A-ABORT and one log line, naming the peer, per connection.
An association that ends mid-data-set (abort, closed connection, protocol error) leaves no
spool file behind.

**pynetdicom internals** (checked by :func:`install_store_stream` against
:data:`~channels.dicom.dul_stream.TESTED_VERSIONS`): the DUL's ``_read_pdu_data``
(replaced on the instance), ``_decode_pdu``, ``_recv_pdu``, ``event_queue``,
``state_machine.current_state``, ``send_pdu``, ``socket.socket``, ``_idle_timer``; the
association's ``_accepted_cx`` and ``dimse.maximum_pdu_size``; the association module's
``time.sleep`` in the association thread's reactor; the ``put`` of the association's
``dimse.msg_queue`` and the DUL's ``to_user_queue`` (wrapped on the instances, to wake that thread). Not installed while
pynetdicom logs at INFO or a handler is bound to an event this path does not
trigger (``EVT_DATA_RECV``, ``EVT_PDU_RECV``, ``EVT_DIMSE_RECV``).
"""

from __future__ import annotations

import logging
import queue
import select
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynetdicom
import pynetdicom.association
from pynetdicom import evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from engine.archive.flush import IN_FLIGHT
from engine.archive.part10 import encode_file_meta
from engine.archive.spool_budget import SpoolBounds, below_reserve, short_of_reserve
from engine.errors import MalformedDataset

from .admission import RefusalReport
from .dimse_command import StoreCommand, read_command, store_response, unanswerable_store
from .dul_stream import TESTED_VERSIONS
from .pdv import PdvSplitter, Piece
from .spool import SpoolFile, spool_failure
from .storage import OUT_OF_RESOURCES, PROCESSING_FAILURE, StoreRequest, StreamedFile, idle_timer_paused

__all__ = ["BUFFER_BYTES", "PROCESSING_FAILURE", "StoreStream", "install_store_stream"]

log = logging.getLogger(__name__)

#: The most bytes read from the socket at once (one buffer per association).
BUFFER_BYTES = 1 << 18
#: The longest an idle storage association's reactor waits in ``select`` (StoreStream.transport_event).
IDLE_WAIT_SECONDS = 0.005
_VERIFICATION = "1.2.840.10008.1.1"
#: The shortest turn of the association thread's reactor on an idle-waiting storage association (pynetdicom: 1 ms).
ASSOCIATION_TURN_SECONDS = 0.005
#: After the DUL handed the association's thread something (a C-ECHO, a release, an abort), the DUL's
#: reactor polls for this long instead of waiting idle, so that the answer leaves at once.
ANSWER_POLL_SECONDS = 0.05
#: Every this many data set bytes the spool's writeback is started (SpoolFile.start_writeback).
WRITEBACK_BYTES = 1 << 18
#: The longest PDU read whole (every PDU but a P-DATA-TF in Sta6, which is read in pieces): an
#: A-ASSOCIATE-RQ of 128 presentation contexts with many transfer syntaxes each and a 2 x 64 KiB user
#: identity stays well below it. A longer one (a header announcing 4 GB) is a protocol error: held in
#: memory it would let one connection take gigabytes of the process within the ARTIM time.
MAX_WHOLE_PDU_BYTES = 1 << 20
#: The longest command set (PS3.7's are a few hundred bytes): its fragments are gathered in memory.
MAX_COMMAND_BYTES = 1 << 16
#: The longest data set of a message this reader does not stream to a spool (a C-FIND identifier, an
#: MPPS N-CREATE/N-SET data set): pynetdicom gathers those in memory.
MAX_UNSPOOLED_DATASET_BYTES = 16 << 20
_P_DATA_TF = 0x04
_A_ASSOCIATE_RQ = 0x01
#: Presentation context IDs are the odd numbers 1-255 (PS3.8 9.3.2.2): an A-ASSOCIATE-RQ proposing more is
#: refused before pynetdicom negotiates it (10,000 contexts, within MAX_WHOLE_PDU_BYTES, cost 1.5 s of CPU).
MAX_PRESENTATION_CONTEXTS = 128
#: The A-ASSOCIATE-RQ's fixed fields before its variable items (PS3.8 9.3.2).
_RQ_FIXED = 68
_PDU_TYPES = range(0x01, 0x08)
_COMMAND_LAST, _COMMAND_MORE = 0x03, 0x01
#: Spool bytes are taken from the calling host's share (dicom.max_spool_bytes_per_host) this many at a time.
RESERVE_STEP_BYTES = 4 << 20
#: A data set being received looks at the spool's free space (archive.min_free_bytes) every this many bytes.
FREE_CHECK_BYTES = 64 << 20

#: Stores refused for want of spool (the host's share, the free-space reserve): logged once per host a minute.
_SHORT_OF_SPOOL = RefusalReport()


class _Oversize(Exception):
    """A data set grew past ``dicom.max_instance_bytes``."""


class _Receiving:
    """One C-STORE whose data set is arriving: the spool (None once refused: the rest is read and dropped),
    the size of what arrived, and the spool bytes taken from the calling host's share."""

    def __init__(self, command: StoreCommand, context: Any, spool: SpoolFile | None) -> None:
        self.command = command
        self.context = context
        self.spool = spool
        self.size = 0
        self.reserved = 0
        self.refused = OUT_OF_RESOURCES
        self.next_free_check = FREE_CHECK_BYTES
        self._unsynced = 0

    def add(self, data: memoryview) -> None:
        assert self.spool is not None
        self.spool.write(data)
        self._unsynced += len(data)
        if self._unsynced >= WRITEBACK_BYTES:
            self._unsynced = 0
            self.spool.start_writeback()


#: Stores one received C-STORE: the DIMSE status to answer, or the status and its Error Comment
#: (:meth:`~channels.dicom.storage.StorageService.answer`).
StoreRunner = Callable[[StoreRequest], "int | tuple[int, str]"]
#: The File Meta Information a spool starts with, from the command's SOP class and instance, the context's
#: transfer syntax and the calling AE (:meth:`~channels.dicom.storage.StorageService.spool_meta`).
SpoolMeta = Callable[[str, str, str, str], bytes]


class StoreStream:
    """The PDU reader of one association (see the module docstring)."""

    def __init__(self, assoc: Any, run: StoreRunner, spool_dir: Path, storage_classes: frozenset[str],
                 bounds: SpoolBounds, spool_meta: SpoolMeta = encode_file_meta) -> None:
        self._assoc = assoc
        self._spool_meta = spool_meta
        self._bounds = bounds
        self._host = str(getattr(getattr(assoc, "requestor", None), "address", "") or "")
        self._dul = assoc.dul
        self._sock = assoc.dul.socket.socket
        self._run = run
        self._spool_dir = spool_dir
        self._storage_classes = storage_classes
        self._buffer = bytearray(BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._command = bytearray()
        self._other = bytearray()
        self._unspooled = 0  # bytes so far of the data set being handed to pynetdicom
        self._current: _Receiving | None = None
        # After a protocol error (A-ABORT queued) whatever else the peer sends is read and dropped, unparsed:
        # one log line for a peer that sends junk, not one (and an A-ABORT) per 6 bytes of it.
        self._discarding = False
        self._transport_event = assoc.dul._is_transport_event
        self._idle_wait: bool | None = None  # decided once the association is established
        # Something queued for the association's own thread (a DIMSE message pynetdicom serves, a
        # release or abort indication): it is woken, and the reactor polls until its answer leaves.
        self._queued = threading.Event()
        self._answer_until = 0.0
        for q in (assoc.dimse.msg_queue, assoc.dul.to_user_queue):
            _after_put(q, self._queued_for_association)

    def _queued_for_association(self) -> None:
        self._answer_until = time.monotonic() + ANSWER_POLL_SECONDS
        self._queued.set()

    def wait_for_work(self, seconds: float) -> None:
        """The association thread's idle turn: at most ``seconds``, ended by anything queued for it."""
        self._queued.wait(seconds)
        self._queued.clear()

    # -- the DUL's reader --------------------------------------------------------------------------

    def transport_event(self) -> bool:
        """The reactor's look at the socket; on a storage association, a wait for data when idle.

        pynetdicom's reactor polls: between a response and the peer's next request it loops
        every ``_run_loop_delay`` (0.1 ms, :func:`~channels.dicom.server.tune_association`), each
        turn a ``select`` and some Python under the GIL. Four storing associations spent more
        CPU polling than storing, and 4 associations stored slower than one. When every accepted
        context is a storage (or Verification) context and nothing waits to be sent, the reactor
        instead blocks in ``select`` (GIL released) for at most :data:`IDLE_WAIT_SECONDS`: data
        from the peer ends the wait at once; something pynetdicom's own thread queues meanwhile (a
        C-ECHO response, a release) is not waited for: after the DUL hands the association's thread
        anything, the reactor polls for :data:`ANSWER_POLL_SECONDS`. Associations with other
        contexts (C-FIND's response stream needs the fast turns) keep pynetdicom's polling.
        """
        if (self._waits_idle() and self._dul.to_provider_queue.empty() and self._dul.event_queue.empty()
                and time.monotonic() >= self._answer_until):
            try:
                pending = getattr(self._sock, "pending", None)  # TLS data already decrypted: no wait
                if not (pending is not None and pending()):
                    select.select([self._sock], [], [], IDLE_WAIT_SECONDS)
            except (OSError, ValueError):  # closed under us: pynetdicom's own look reports it
                pass
        return bool(self._transport_event())

    def idle_waiting(self) -> bool:
        """True once the association is known to carry only storage (and Verification) contexts."""
        return self._idle_wait is True

    def _waits_idle(self) -> bool:
        if self._idle_wait is None:
            if self._dul.state_machine.current_state != "Sta6":
                return False
            classes = {str(cx.abstract_syntax) for cx in self._assoc._accepted_cx.values()}
            self._idle_wait = classes <= self._storage_classes | {_VERIFICATION}
        return self._idle_wait

    def read_pdu(self) -> None:
        """Read PDUs from the socket (the DUL reactor calls this when the socket is readable).

        While a C-STORE data set is arriving its next PDU is read at once: the reactor
        would otherwise take an idle turn (it sleeps when no event was queued) between PDUs.
        """
        if self._discarding:
            self._discard()
            return
        while self._read_one():
            # dicom.idle_timeout_seconds counts from the last PDU: pynetdicom restarts its idle timer only
            # when this call returns, which for a whole data set (read here PDU after PDU) can be minutes.
            self._dul._idle_timer.restart()
            if self._current is None:
                break

    def _peer(self) -> str:
        requestor = getattr(self._assoc, "requestor", None)
        return f"{getattr(requestor, 'address', '?')}:{getattr(requestor, 'port', '?')}"

    def _protocol_error(self, why: str, *args: object, level: int = logging.ERROR) -> None:
        """Abort the association (Evt19: A-ABORT) and drop whatever else arrives on it, logged once."""
        log.log(level, "DICOM connection from %s: " + why + "; association aborted", self._peer(), *args)
        self._abandon()
        self._discarding = True
        self._dul.event_queue.put("Evt19")

    def _peer_gone(self, exc: OSError) -> None:
        """One INFO line: a peer that resets, or stalls past the idle timeout, mid-PDU is no error of ours
        (as :class:`~channels.dicom.log_filters.PeerGoneFilter` makes of pynetdicom's own reader's)."""
        log.info("DICOM connection from %s reset or timed out while reading a PDU (%s)", self._peer(),
                 type(exc).__name__)

    def _discard(self) -> None:
        """Read what the socket holds and drop it (after a protocol error); Evt17 when the peer is gone."""
        try:
            got = self._sock.recv_into(self._view)
        except OSError:
            got = 0
        if not got:
            self._dul.event_queue.put("Evt17")

    def _read_one(self) -> bool:
        """One PDU; True when it was a P-DATA-TF read here without error."""
        head = self._exactly(6)
        if head is None:
            return False
        pdu_type, _, length = struct.unpack(">BBL", head)
        if pdu_type not in _PDU_TYPES:
            self._protocol_error("unknown PDU type 0x%02X (not DICOM, or out of step)", pdu_type)
            return False
        if pdu_type != _P_DATA_TF or self._dul.state_machine.current_state != "Sta6":
            self._abandon()  # a release or abort (or a protocol error) ends any data set in progress
            if length > MAX_WHOLE_PDU_BYTES:
                self._protocol_error("a PDU of type 0x%02X announces %d bytes, over the %d read whole",
                                     pdu_type, length, MAX_WHOLE_PDU_BYTES)  # fmt: skip
                return False
            body = self._exactly(length)
            if body is None:
                return False
            proposed = _presentation_contexts(body) if pdu_type == _A_ASSOCIATE_RQ else 0
            if proposed > MAX_PRESENTATION_CONTEXTS:
                self._protocol_error("an A-ASSOCIATE-RQ proposes %d presentation contexts, more than the %d"
                                     " PS3.8 allows", proposed, MAX_PRESENTATION_CONTEXTS)  # fmt: skip
                return False
            self._hand_over_pdu(head + body)
            return False
        return self._read_data(length)

    def _exactly(self, count: int) -> bytes | None:
        """``count`` bytes from the socket, or None (Evt17 queued) when the connection ends first."""
        data = bytearray()
        try:
            while len(data) < count:
                chunk = self._sock.recv(min(count - len(data), BUFFER_BYTES))
                if not chunk:
                    break
                data += chunk
        except OSError as exc:  # reset, or the stall timeout (TimeoutError is an OSError)
            self._peer_gone(exc)
        if len(data) < count:
            self._abandon()
            self._dul.event_queue.put("Evt17")
            return None
        return bytes(data)

    def _hand_over_pdu(self, data: bytes) -> None:
        """What pynetdicom's own reader does with a complete PDU."""
        try:
            pdu, event = self._dul._decode_pdu(bytearray(data))
        except Exception as exc:  # pynetdicom's reader treats any decoding failure so
            self._protocol_error("a PDU of type 0x%02X could not be decoded (%s)", data[0], type(exc).__name__)
            return
        self._dul._recv_pdu.put(pdu)
        self._dul.event_queue.put(event)

    def _read_data(self, length: int) -> bool:
        """A P-DATA-TF PDU in Sta6: stream owned data sets, hand the other PDVs to pynetdicom."""
        splitter, others = PdvSplitter(), list[tuple[int, bytes]]()
        left = length
        try:
            while left:
                got = self._sock.recv_into(self._view[: min(left, BUFFER_BYTES)])
                if not got:
                    raise ConnectionError("closed mid-PDU")
                left -= got
                for piece in splitter.feed(self._view[:got]):
                    self._piece(piece, others)
            splitter.finish()
        except OSError as exc:
            self._peer_gone(exc)
            self._abandon()
            self._dul.event_queue.put("Evt17")
            return False
        except MalformedDataset as exc:
            self._protocol_error("invalid P-DATA-TF PDU: %s", str(exc))  # lengths, context ids, limits: no values
            return False
        except _Oversize:
            self._protocol_error("a C-STORE data set passed %d bytes (dicom.max_instance_bytes)",
                                 self._bounds.max_instance_bytes, level=logging.WARNING)  # fmt: skip
            return False
        if others:
            primitive = P_DATA()
            primitive.presentation_data_value_list.extend(others)  # as pynetdicom fills it
            self._dul._recv_pdu.put(P_DATA_TF(primitive))
            self._dul.event_queue.put("Evt10")
        return True

    # -- PDVs --------------------------------------------------------------------------------------

    def _piece(self, piece: Piece, others: list[tuple[int, bytes]]) -> None:
        current = self._current
        if piece.is_command:
            if current is not None:
                raise MalformedDataset("a command arrived before the previous data set ended")
            self._command += piece.data
            if len(self._command) > MAX_COMMAND_BYTES:
                raise MalformedDataset(f"a command set longer than {MAX_COMMAND_BYTES} bytes")
            if piece.ends and piece.is_last:
                self._command_complete(piece.context_id, others)
            return
        if current is None:  # a data set of pynetdicom's message: handed over whole, PDV by PDV
            self._unspooled += len(piece.data)
            if self._unspooled > MAX_UNSPOOLED_DATASET_BYTES:
                raise MalformedDataset(f"a data set held in memory longer than {MAX_UNSPOOLED_DATASET_BYTES} bytes")
            if piece.ends and piece.is_last:
                self._unspooled = 0
            self._other += piece.data
            if piece.ends:
                others.append((piece.context_id, bytes([piece.control]) + bytes(self._other)))
                self._other.clear()
            return
        if piece.context_id != current.context.context_id:  # PS3.8 9.3.5.1: a message uses one context
            raise MalformedDataset(f"a data set fragment on presentation context {piece.context_id}, "
                                   f"its command's is {current.context.context_id}")
        self._add(current, piece.data)
        if piece.ends and piece.is_last:
            self._current = None
            self._finish(current)

    def _command_complete(self, context_id: int, others: list[tuple[int, bytes]]) -> None:
        raw = bytes(self._command)
        self._command.clear()
        context = self._assoc._accepted_cx.get(context_id)
        command = self._owned(raw, context)
        if command is None:
            others.append((context_id, bytes([_COMMAND_LAST]) + raw))
            return
        rx = self._current = _Receiving(command, context, None)
        IN_FLIGHT.started(rx)  # until answered: the store hands work to other threads only when alone
        if below_reserve(self._spool_dir, self._bounds.min_free_bytes):
            self._short_of_spool(rx, short_of_reserve(self._spool_dir, self._bounds.min_free_bytes))
            return
        if not self._reserve(rx, min(RESERVE_STEP_BYTES, self._bounds.max_instance_bytes)):
            return
        rx.spool = self._spool()
        rx.spool.write(self._spool_meta(command.sop_class_uid, command.sop_instance_uid,
                                        str(context.transfer_syntax[0]), self._calling_ae()))  # fmt: skip

    # -- spool bounds (engine.archive.spool_budget) --------------------------------------------------

    def _add(self, rx: _Receiving, data: memoryview) -> None:
        """Count a data set fragment and spool it, within the instance, host and free-space bounds."""
        rx.size += len(data)
        if rx.size > self._bounds.max_instance_bytes:
            raise _Oversize
        if rx.spool is None:  # refused: read to its end and dropped, then answered
            return
        if rx.size > rx.reserved:  # a step more, never past the largest instance (its size is within it)
            step = min(rx.size - rx.reserved + RESERVE_STEP_BYTES, self._bounds.max_instance_bytes - rx.reserved)
            if not self._reserve(rx, step):
                return
        if rx.size >= rx.next_free_check:
            rx.next_free_check = rx.size + FREE_CHECK_BYTES
            if below_reserve(self._spool_dir, self._bounds.min_free_bytes):
                self._short_of_spool(rx, short_of_reserve(self._spool_dir, self._bounds.min_free_bytes))
                return
        rx.add(data)

    def _reserve(self, rx: _Receiving, count: int) -> bool:
        """Take ``count`` more spool bytes from the calling host's share; refuse the store when it has none."""
        if self._bounds.budget.reserve(self._host, count):
            rx.reserved += count
            return True
        self._short_of_spool(rx, "the calling host has dicom.max_spool_bytes_per_host in flight")
        return False

    def _short_of_spool(self, rx: _Receiving, why: str) -> None:
        """Refuse ``rx`` (0xA700 once its data set has arrived): drop its spool, give its bytes back."""
        count = _SHORT_OF_SPOOL.note(self._host, time.monotonic())
        if count is not None:
            log.warning("C-STORE from %s refused, out of resources (%d since the last report): %s",
                        self._peer(), count, why)  # fmt: skip
        self._drop_spool(rx)

    def _drop_spool(self, rx: _Receiving) -> None:
        if rx.spool is not None:
            rx.spool.close()
            spool_failure(Path(rx.spool.name))  # a failed write of it is of no interest now
            Path(rx.spool.name).unlink(missing_ok=True)
            rx.spool = None
        self._give_back(rx)

    def _give_back(self, rx: _Receiving) -> None:
        if rx.reserved:
            self._bounds.budget.release(self._host, rx.reserved)
            rx.reserved = 0

    def _spool(self) -> SpoolFile:
        try:
            return SpoolFile(self._spool_dir)
        except OSError:  # the location is gone or full: spool elsewhere, the store answers for the location
            return SpoolFile(Path(tempfile.gettempdir()))

    def _owned(self, raw: bytes, context: Any) -> StoreCommand | None:
        """The C-STORE-RQ this reader streams, or None for anything pynetdicom should see.

        Raises :class:`MalformedDataset` (the association is aborted) for a C-STORE-RQ that cannot be
        served at all: pynetdicom's decoding of it raises in the DUL's thread, which then ends with a
        traceback instead of an A-ABORT.
        """
        if context is None or str(context.abstract_syntax) not in self._storage_classes:
            return None
        try:
            elements = read_command(raw)
        except MalformedDataset:
            return None  # pynetdicom decodes it and answers as it always has
        why = unanswerable_store(elements)
        if why is not None:
            raise MalformedDataset(why)
        return StoreCommand.from_elements(elements)

    def _calling_ae(self) -> str:
        return str(self._assoc.requestor.ae_title).strip()

    def _finish(self, rx: _Receiving) -> None:
        """Store the complete data set and queue the response."""
        if rx.spool is None:  # refused while it arrived
            try:
                self._respond(int(rx.context.context_id), store_response(rx.command, rx.refused))
            finally:
                IN_FLIGHT.ended(rx)
            return
        rx.spool.close()
        path = Path(rx.spool.name)
        request = StoreRequest(
            path, rx.command.sop_class_uid, rx.command.sop_instance_uid, str(rx.context.abstract_syntax),
            str(rx.context.transfer_syntax[0]), self._calling_ae(), StreamedFile(rx.size),
        )  # fmt: skip
        try:
            with idle_timer_paused(self._assoc):  # our store's time is not the peer's idleness
                answer = self._run(request)
            status, comment = answer if isinstance(answer, tuple) else (answer, "")
        except Exception:  # the service answers (and keeps) every failure; one that escapes it is as pynetdicom's
            log.exception("C-STORE %s: the storage service failed", rx.command.sop_instance_uid)
            status, comment = PROCESSING_FAILURE, ""
        finally:
            path.unlink(missing_ok=True)  # linked into the archive, copied to quarantine, or refused
            self._give_back(rx)
        try:
            self._respond(int(rx.context.context_id), store_response(rx.command, status, comment))
        finally:
            IN_FLIGHT.ended(rx)

    def _respond(self, context_id: int, command: bytes) -> None:
        peer_max = int(self._assoc.dimse.maximum_pdu_size or 0)
        room = peer_max - 6 if peer_max > 6 else len(command)
        parts = [command[i : i + room] for i in range(0, len(command), room)]
        for n, part in enumerate(parts):
            control = _COMMAND_LAST if n == len(parts) - 1 else _COMMAND_MORE
            primitive = P_DATA()
            primitive.presentation_data_value_list.append((context_id, bytes([control]) + part))  # no setter check
            self._dul.send_pdu(primitive)
        if len(parts) == 1:
            # Evt9 ("P-DATA request primitive") now, as the reactor would queue it on its next turn after an
            # idle sleep: the response then leaves in this turn. One event for one queued primitive; a
            # fragmented response is left to the reactor, which queues one Evt9 per primitive it finds.
            self._dul.event_queue.put("Evt9")

    def _abandon(self) -> None:
        """The association is ending mid-data-set: close and remove the spool (nothing of it is stored;
        only a process killed mid-data-set leaves one behind, for the sweep)."""
        if self._current is not None:
            IN_FLIGHT.ended(self._current)
            self._drop_spool(self._current)
            self._current = None
        self._command.clear()
        self._other.clear()
        self._unspooled = 0


def _presentation_contexts(body: bytes) -> int:
    """How many presentation context items (0x20) an A-ASSOCIATE-RQ's body carries (items: type, reserved,
    2-byte length); a truncated item ends the count (pynetdicom's decoding then refuses the PDU)."""
    count, pos = 0, _RQ_FIXED
    while pos + 4 <= len(body):
        kind, length = body[pos], struct.unpack_from(">H", body, pos + 2)[0]
        count += kind == 0x20
        pos += 4 + length
    return count


class _AssociationClock:
    """``time`` as pynetdicom's association module sees it, with a slower reactor turn on storage associations.

    The association's own thread (pynetdicom's ``Association._run_reactor``) sleeps 1 ms, then
    looks for a decoded DIMSE message, a release or an abort, whatever the association does. On
    an association this stream reads, every C-STORE is stored and answered in the DUL's thread,
    so that thread's turns only find the rare C-ECHO or the release; four storing associations
    still woke it 4,000 times a second, each turn a GIL hand-over that interrupts the thread
    that is storing. On an association that is idle-waiting (storage and Verification
    contexts only, :meth:`StoreStream.idle_waiting`) a sleep of that thread lasts up to
    :data:`ASSOCIATION_TURN_SECONDS` instead, and ends as soon as the DUL queues something for it
    (a DIMSE message pynetdicom serves, such as a C-ECHO, or a release or abort indication:
    :meth:`StoreStream.wait_for_work`); the DUL's reactor then polls until the answer has left
    (:data:`ANSWER_POLL_SECONDS`) instead of waiting idle. Every other thread, and every other
    association, sleeps as asked.
    """

    def __init__(self) -> None:
        # Weak both ways: a stream refers to its association, so a strong value would keep the key, and
        # with it the association, its contexts and the stream's buffer, alive for the process's life.
        self._streams: weakref.WeakKeyDictionary[Any, weakref.ref[StoreStream]] = weakref.WeakKeyDictionary()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def register(self, assoc: Any, stream: StoreStream) -> None:
        """Slow the reactor turns of ``assoc``'s thread while ``stream`` is idle-waiting."""
        self._streams[assoc] = weakref.ref(stream)

    def stream_of(self, assoc: Any) -> StoreStream | None:
        """The stream registered for ``assoc``, while both live."""
        ref = self._streams.get(assoc)
        return ref() if ref is not None else None

    def sleep(self, seconds: float) -> None:
        """``time.sleep``; at least :data:`ASSOCIATION_TURN_SECONDS` in an idle-waiting association's thread."""
        stream = self.stream_of(threading.current_thread())
        if stream is not None and stream.idle_waiting():
            stream.wait_for_work(max(seconds, ASSOCIATION_TURN_SECONDS))
        else:
            time.sleep(seconds)


_CLOCK = _AssociationClock()


def _after_put(q: queue.Queue[Any], then: Callable[[], None]) -> None:
    """Call ``then`` after each ``q.put`` (the instance's method replaced)."""
    put = q.put

    def put_then(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        then()

    q.put = put_then  # type: ignore[method-assign]


def _install_clock() -> bool:
    """Put :data:`_CLOCK` in place of ``time`` in pynetdicom's association module (once); False when that
    module no longer uses ``time`` as expected (the association thread then keeps its 1 ms turns)."""
    module: Any = pynetdicom.association
    if module.time is not _CLOCK:
        if module.time is not time:
            return False
        module.time = _CLOCK
    return True


#: Events whose handlers this path would skip: with one bound, pynetdicom's own path stays.
_SKIPPED_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_DIMSE_RECV)


def _internals_as_expected(assoc: Any) -> bool:
    dul = getattr(assoc, "dul", None)
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    return (
        pynetdicom.__version__.startswith(TESTED_VERSIONS)
        and callable(getattr(dul, "_read_pdu_data", None))
        and callable(getattr(dul, "_is_transport_event", None))
        and isinstance(getattr(dul, "to_provider_queue", None), queue.Queue)
        and callable(getattr(dul, "_decode_pdu", None))
        and isinstance(getattr(dul, "_recv_pdu", None), queue.Queue)
        and isinstance(getattr(dul, "event_queue", None), queue.Queue)
        and isinstance(getattr(getattr(dul, "state_machine", None), "current_state", None), str)
        and callable(getattr(dul, "send_pdu", None))
        and isinstance(getattr(assoc, "_accepted_cx", None), dict)
        and isinstance(getattr(dul, "to_user_queue", None), queue.Queue)
        and callable(getattr(getattr(dul, "_idle_timer", None), "restart", None))
        and isinstance(getattr(getattr(assoc, "dimse", None), "msg_queue", None), queue.Queue)
        and callable(getattr(sock, "recv_into", None))
    )


def install_store_stream(assoc: Any, run: StoreRunner, spool_dir: Path, storage_classes: frozenset[str],
                         bounds: SpoolBounds, spool_meta: SpoolMeta = encode_file_meta) -> StoreStream | None:
    """Put a :class:`StoreStream` in ``assoc``'s DUL, or None where pynetdicom's own path must stay."""
    if logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        return None
    if any(assoc.get_handlers(event) for event in _SKIPPED_EVENTS) or not _internals_as_expected(assoc):
        return None
    stream = StoreStream(assoc, run, spool_dir, storage_classes, bounds, spool_meta)
    assoc.dul._read_pdu_data = stream.read_pdu
    assoc.dul._is_transport_event = stream.transport_event
    if _install_clock():
        _CLOCK.register(assoc, stream)
    return stream
