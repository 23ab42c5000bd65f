"""Pending C-FIND responses handed to pynetdicom's DUL as ready-made P-DATA primitives.

pynetdicom sends each response yielded by an ``EVT_C_FIND`` handler through
``DIMSEServiceProvider.send_msg``: a DIMSE message object, the command set and the
identifier encoded by pydicom, then P-DATA primitives. That costs more than half of a
broad worklist query. A :class:`ResponseStream` instead puts the P-DATA primitives
framed by :mod:`channels.dicom.cfind_rsp` on the same queue ``send_msg`` uses
(``DULServiceProvider.send_pdu``), so the association's state machine and its reactor
thread still send every PDU, with TLS or without, and the final response (success,
cancel or failure) is still pynetdicom's own, sent after them in queue order.

**pynetdicom internals** used here and nowhere else, checked by
:func:`response_stream`, which returns None (pynetdicom's own path) when they are not
as expected: the DUL's ``to_provider_queue`` (a ``queue.Queue``, read to bound how much
is queued), the DIMSE provider's ``maximum_pdu_size`` (the peer's Maximum Length
Received), and the DUL's socket (``dul.socket.socket``, polled with ``select`` without
reading). Tested with pynetdicom 3.0 (:data:`TESTED_VERSIONS`).

Responses sent this way trigger no ``EVT_DIMSE_SENT`` and are not logged one by one,
so the stream is not used when a handler is bound to that event or when pynetdicom's
logger would log responses (INFO).
"""

from __future__ import annotations

import logging
import queue
import select
import time
from collections.abc import Sequence
from typing import Any

import pynetdicom
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA

from .cfind_rsp import FindResponseFramer

__all__ = ["TESTED_VERSIONS", "ResponseStream", "response_stream"]

#: pynetdicom versions whose internals this module was checked against.
TESTED_VERSIONS = ("3.0.",)

#: When a batch may be queued: at most this many PDUs still waiting for the reactor, so
#: the reactor stays busy while the next batch is encoded.
LOW_WATER = 8
#: Seconds between looks at the queue while waiting for room.
POLL_SECONDS = 0.0002
#: Every this many batches the queue is let run empty, whatever ``select`` said: data
#: already buffered inside a TLS connection is invisible to ``select``.
DRAIN_EVERY = 8


class ResponseStream:
    """Sends one C-FIND's pending responses (status, encoded identifier) on one association.

    The reactor reads from the socket only when its queue is empty, so a C-CANCEL
    (PS3.7 9.3.2.3) or an A-ABORT from the peer would wait behind a stream that keeps the
    queue full; :meth:`send` lets the queue drain whenever the socket has data to read,
    and every :data:`DRAIN_EVERY` batches in any case.
    """

    def __init__(self, assoc: Any, framer: FindResponseFramer, implicit_vr: bool, is_cancelled: Any) -> None:
        self.implicit_vr = implicit_vr
        self._assoc = assoc
        self._dul = assoc.dul
        self._queue: queue.Queue[Any] = assoc.dul.to_provider_queue
        self._fd = assoc.dul.socket.socket.fileno()
        self._framer = framer
        self._is_cancelled = is_cancelled
        self._cancelled = False
        self._commands: dict[int, bytes] = {}
        self._batches = 0

    def cancelled(self) -> bool:
        """True once the peer has cancelled this C-FIND."""
        self._cancelled = self._cancelled or bool(self._is_cancelled())
        return self._cancelled

    def send(self, responses: Sequence[tuple[int, bytes]]) -> bool:
        """Queue ``responses`` for sending; False (nothing queued) if cancelled or the association ended."""
        if not self._wait_for_turn() or self.cancelled():
            return False
        for status, identifier in responses:
            command = self._commands.get(status)
            if command is None:
                command = self._commands[status] = self._framer.command(status, True)
            for pdvs in self._framer.frame(command, identifier):
                primitive = P_DATA()
                primitive.presentation_data_value_list.extend(pdvs)  # as pynetdicom fills it
                self._dul.send_pdu(primitive)
        return True

    def _wait_for_turn(self) -> bool:
        self._batches += 1
        room = 0 if self._batches % DRAIN_EVERY == 0 else LOW_WATER
        while self._assoc.is_established and self._dul.is_alive():
            if self._queue.qsize() <= room and not self._incoming():
                if room == 0:
                    time.sleep(POLL_SECONDS)  # the reactor's turn to look at the socket
                return True
            if self.cancelled():
                return True
            time.sleep(POLL_SECONDS)
        return False

    def _incoming(self) -> bool:
        try:
            readable, _, _ = select.select([self._fd], [], [], 0)
        except (OSError, ValueError):  # closed under us: the reactor sees it too
            return False
        return bool(readable)


def _internals_as_expected(assoc: Any) -> bool:
    dul = getattr(assoc, "dul", None)
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    return (
        pynetdicom.__version__.startswith(TESTED_VERSIONS)
        and isinstance(getattr(dul, "to_provider_queue", None), queue.Queue)
        and callable(getattr(dul, "send_pdu", None))
        and callable(getattr(dul, "is_alive", None))
        and isinstance(getattr(getattr(assoc, "dimse", None), "maximum_pdu_size", None), int)
        and callable(getattr(sock, "fileno", None))
    )


def response_stream(event: Any) -> ResponseStream | None:
    """A stream for the C-FIND of ``event`` (an ``EVT_C_FIND`` event), or None for pynetdicom's path.

    None for transfer syntaxes other than Implicit/Explicit VR Little Endian, when
    pynetdicom's internals are not as expected, or when responses must be seen one by one
    (pynetdicom logging at INFO, an ``EVT_DIMSE_SENT`` handler).
    """
    assoc = event.assoc
    syntax = UID(event.context.transfer_syntax)
    if not syntax.is_little_endian or syntax.is_deflated or syntax.is_encapsulated:
        return None
    if logging.getLogger("pynetdicom").isEnabledFor(logging.INFO) or assoc.get_handlers(evt.EVT_DIMSE_SENT):
        return None
    if not _internals_as_expected(assoc):
        return None
    request = event.request
    framer = FindResponseFramer(
        int(event.context.context_id),
        str(request.AffectedSOPClassUID),
        int(request.MessageID),
        int(assoc.dimse.maximum_pdu_size),
    )
    return ResponseStream(assoc, framer, bool(syntax.is_implicit_VR), lambda: event.is_cancelled)
