"""C-STORE requests pynetdicom would leave unanswered: served by the Storage service, or the association aborted.

pynetdicom reads an empty UID as an absent one, and its association thread drops a request
primitive that lacks a mandatory parameter (``Association._serve_request``: "Received
unexpected C-STORE service message"). A C-STORE-RQ whose Affected SOP Class or Instance UID is
empty (PS3.7 9.3.1.1 makes both mandatory; some senders copy them from an empty File Meta
Information) therefore got no response: the sender waited for its timeout, and the data set
pynetdicom had spooled stayed in ``.incoming`` until swept. :func:`serve_invalid_stores` wraps
that method on one association so that such a request:

* with a Message ID goes to the Storage service as any other; the C-STORE handler
  (:meth:`~channels.dicom.storage.StorageService.on_store`) refuses it with its status (PS3.4
  B.2.3: 0xC220 without a valid SOP Instance UID, 0xC221 when the data set's is not the
  command's, 0xA900 when its SOP class is not) and quarantines what arrived;
* without one cannot be answered (the response names it, PS3.7 9.3.1.2): its spool is removed and
  the association aborted, as pynetdicom aborts on an undecodable message.

Only requests pynetdicom decodes get here: those on an association without the streamed receive
(:func:`~channels.dicom.store_stream.install_store_stream`), and those the stream hands over (a
command set radbridge's reader cannot read). The stream answers the others itself.

**pynetdicom internals**: ``Association._serve_request`` (replaced on the instance),
``Association._accepted_cx``, the request primitive's ``_dataset_file`` (the spool) and
``REQUEST_KEYWORDS``, and ``StorageServiceClass.SCP``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass

__all__ = ["serve_invalid_stores"]

log = logging.getLogger(__name__)


def _missing(msg: C_STORE) -> list[str]:
    return [keyword for keyword in msg.REQUEST_KEYWORDS if getattr(msg, keyword) is None]


def _discard_spool(msg: C_STORE) -> None:
    spool = getattr(msg, "_dataset_file", None)
    if spool is not None:
        spool.close()
        Path(spool.name).unlink(missing_ok=True)


def _serve_invalid_store(assoc: Any, msg: C_STORE, context_id: int) -> None:
    missing = _missing(msg)
    context = assoc._accepted_cx.get(context_id)
    if msg.MessageID is None or context is None:
        log.error("C-STORE request without %s: unanswerable, association aborted",
                  "a Message ID" if context is not None else "an accepted presentation context")
        _discard_spool(msg)
        assoc.abort()
        return
    log.warning("C-STORE request (message %d) without %s: refused by the storage service",
                msg.MessageID, ", ".join(missing))
    try:
        StorageServiceClass(assoc).SCP(msg, context)
    finally:
        _discard_spool(msg)  # the service class removes it too; not when the handler was never reached


def serve_invalid_stores(assoc: Any) -> bool:
    """Have ``assoc`` answer (or abort on) C-STORE requests pynetdicom would drop; False if it cannot."""
    serve = getattr(assoc, "_serve_request", None)
    if not callable(serve) or not isinstance(getattr(assoc, "_accepted_cx", None), dict):
        return False

    def serve_request(msg: Any, context_id: int) -> None:
        if isinstance(msg, C_STORE) and msg.MessageIDBeingRespondedTo is None and _missing(msg):
            _serve_invalid_store(assoc, msg, context_id)
        else:
            serve(msg, context_id)

    assoc._serve_request = serve_request
    return True
