"""Log filters the DICOM listener installs on its libraries' loggers.

* :class:`PeerGoneFilter`: a modality that closes or resets its connection mid-PDU,
  or a connection the listener cuts (:mod:`channels.dicom.listener`), makes
  pynetdicom's DUL log an ERROR and then the ``OSError`` with its traceback. Neither is
  an error of this engine: the first becomes one INFO line, the traceback is dropped.
* :class:`IdleTimeoutFilter`: pynetdicom's association thread logs "Network timeout reached"
  at ERROR, without the peer, when ``dicom.idle_timeout_seconds`` pass without a PDU and it
  aborts the association. That is the listener's own limit working, not an error: it becomes
  one INFO line naming the peer and the setting (once per association; never per PDU).
* :class:`ValueRedactFilter`: pydicom reports a value it cannot read for its VR with
  the value quoted ("Invalid value for VR DA: '19700101x'"), at WARNING; in a query or
  an MPPS request that value is a patient's birth date or name. The quoted value is
  replaced, the rest of the record kept. pydicom also raises the same text as a
  ``UserWarning``; :func:`install_log_filters` silences those (the log record stays).

Every other record passes unchanged.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from typing import Any

__all__ = [
    "ASSOCIATION_LOGGER",
    "DUL_LOGGER",
    "PYDICOM_LOGGER",
    "IdleTimeoutFilter",
    "PeerGoneFilter",
    "ValueRedactFilter",
    "install_log_filters",
]

#: The logger pynetdicom's upper layer (the reactor that reads PDUs) writes to.
DUL_LOGGER = "pynetdicom.dul"

#: Messages of pynetdicom 3.0's ``DULServiceProvider._read_pdu_data`` for a connection gone under it,
#: and the line each becomes.
_PEER_GONE = {
    "Connection closed before the entire PDU was received": "DICOM connection reset or timed out while reading a PDU",
    "The received PDU is shorter than expected": "DICOM peer closed the connection in the middle of a PDU",
}
_READER = "_read_pdu_data"


class PeerGoneFilter(logging.Filter):
    """Turns the DUL's "connection closed mid-PDU" records into one INFO line (a logger filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName != _READER:
            return True
        if record.exc_info and isinstance(record.exc_info[1], OSError):
            return False  # the traceback after the ERROR line: the line already says it
        line = next((v for k, v in _PEER_GONE.items() if str(record.msg).startswith(k)), None)
        if line is not None:
            record.msg, record.args = line, ()
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


#: The logger of pynetdicom's association thread (``Association._run_reactor``).
ASSOCIATION_LOGGER = "pynetdicom.association"
_NETWORK_TIMEOUT = "Network timeout reached"


class IdleTimeoutFilter(logging.Filter):
    """Turns pynetdicom's "Network timeout reached" into one INFO line naming the peer (a logger filter).

    The record is written by the association's own thread (a ``threading.Thread``): the peer and
    the timeout are read from it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _NETWORK_TIMEOUT:
            return True
        assoc: Any = threading.current_thread()
        peer = getattr(assoc, "requestor" if getattr(assoc, "is_acceptor", False) else "acceptor", None)
        address = f"{getattr(peer, 'address', '?')}:{getattr(peer, 'port', '?')}"
        title = str(getattr(peer, "ae_title", "") or "").strip()
        record.msg = "DICOM association with %s (%s): no PDU for %s s (dicom.idle_timeout_seconds); aborted"
        record.args = (address, title or "?", getattr(assoc, "network_timeout", "?"))
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


#: pydicom's logger (``pydicom.misc.warn_and_log``).
PYDICOM_LOGGER = "pydicom"
#: pydicom 3.0's messages that quote a value it could not read, and the quoted part.
_VALUE_MESSAGES = re.compile(r"^(Invalid value for VR|Value \"|Invalid value ')")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_WITHHELD = "<value withheld>"


class ValueRedactFilter(logging.Filter):
    """Replaces the quoted value in pydicom's "invalid value" records (a logger filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if _VALUE_MESSAGES.match(text):
            record.msg, record.args = _QUOTED.sub(_WITHHELD, text), ()
        return True


_PEER_GONE_FILTER = PeerGoneFilter()
_IDLE_TIMEOUT = IdleTimeoutFilter()
_REDACT = ValueRedactFilter()


def install_log_filters() -> None:
    """Attach the filters (idempotent) and silence pydicom's value-quoting ``UserWarning``s."""
    for name, flt in ((DUL_LOGGER, _PEER_GONE_FILTER), (ASSOCIATION_LOGGER, _IDLE_TIMEOUT), (PYDICOM_LOGGER, _REDACT)):
        logger = logging.getLogger(name)
        if flt not in logger.filters:
            logger.addFilter(flt)
    warnings.filterwarnings("ignore", message=r"(Invalid value for VR|Value \"|Invalid value ')", category=UserWarning)
