"""pynetdicom's log records of a peer going away, turned into one INFO line each.

A modality that closes or resets its connection mid-PDU, or a connection the
listener cuts (:mod:`channels.dicom.listener`), makes pynetdicom's DUL log an ERROR
and then the ``OSError`` with its traceback. Neither is an error of this engine:
:class:`PeerGoneFilter` rewrites the first to one INFO line and drops the traceback.
Every other record passes unchanged.
"""

from __future__ import annotations

import logging

__all__ = ["DUL_LOGGER", "PeerGoneFilter", "install_peer_log_filter"]

#: The logger pynetdicom's upper layer (the reactor that reads PDUs) writes to.
DUL_LOGGER = "pynetdicom.dul"

#: Messages of pynetdicom 3.0's ``DULServiceProvider._read_pdu_data`` for a connection closed under it.
_PEER_GONE_PREFIXES = (
    "Connection closed before the entire PDU was received",
    "The received PDU is shorter than expected",
)
_READER = "_read_pdu_data"
_ONE_LINE = "DICOM peer closed the connection before the PDU was complete"


class PeerGoneFilter(logging.Filter):
    """Turns the DUL's "connection closed mid-PDU" records into one INFO line (a logger filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName != _READER:
            return True
        if record.exc_info and isinstance(record.exc_info[1], OSError):
            return False  # the traceback after the ERROR line: the line already says it
        if isinstance(record.msg, str) and record.msg.startswith(_PEER_GONE_PREFIXES):
            record.msg, record.args = _ONE_LINE, ()
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


_FILTER = PeerGoneFilter()


def install_peer_log_filter() -> None:
    """Attach :class:`PeerGoneFilter` to pynetdicom's DUL logger (once; idempotent)."""
    logger = logging.getLogger(DUL_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
