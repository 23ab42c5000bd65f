"""A request whose SOP Class is not its presentation context's gets a refusal, not an abort.

pynetdicom chooses the service class from the request's Affected (or Requested) SOP
Class UID, not from the presentation context it arrived on. A Patient Root or Study
Root C-FIND sent on the worklist context therefore reaches the Query/Retrieve service
class, which raises because the context is not one of its own; pynetdicom logs the
traceback and aborts the association. PS3.4 F.7.2.1 and K.4.1 tie the SOP Class UID
of a request to the SOP Class negotiated for its context.

:func:`refuse_foreign_sop_classes` wraps one association's request dispatch so that
such a request is answered at once with the response of its own kind carrying
0x0122 "Refused: SOP Class not supported" (PS3.7 Annex C; listed for C-FIND, C-ECHO,
N-CREATE and N-SET in PS3.7 9.1, 9.3 and 10.1): this AE serves no other SOP Class on
that context. The association stays up. A request for a context that was not
accepted is left to pynetdicom (it aborts, as PS3.8 requires).

**pynetdicom internals** (3.0): ``Association._serve_request`` and ``_accepted_cx``.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom.dimse_primitives import C_ECHO, C_FIND, N_CREATE, N_SET

__all__ = ["SOP_CLASS_NOT_SUPPORTED", "refusal", "refuse_foreign_sop_classes"]

log = logging.getLogger(__name__)

SOP_CLASS_NOT_SUPPORTED = 0x0122

#: The request types this AE serves; their responses are built the same way.
_SERVED = (C_ECHO, C_FIND, N_CREATE, N_SET)


def _sop_class(msg: Any) -> str:
    return str(getattr(msg, "AffectedSOPClassUID", None) or getattr(msg, "RequestedSOPClassUID", None) or "")


def refusal(msg: Any, abstract_syntax: str) -> Any | None:
    """The 0x0122 response to ``msg`` if its SOP Class is not ``abstract_syntax``, else None."""
    requested = _sop_class(msg)
    if not isinstance(msg, _SERVED) or requested == abstract_syntax:
        return None
    rsp: Any = type(msg)()
    rsp.MessageIDBeingRespondedTo = msg.MessageID
    rsp.AffectedSOPClassUID = requested
    instance = getattr(msg, "AffectedSOPInstanceUID", None) or getattr(msg, "RequestedSOPInstanceUID", None)
    if instance and isinstance(msg, N_CREATE | N_SET):
        rsp.AffectedSOPInstanceUID = instance
    rsp.Status = SOP_CLASS_NOT_SUPPORTED
    return rsp


def refuse_foreign_sop_classes(assoc: Any) -> None:
    """Answer ``assoc``'s requests for another SOP Class than their context's with 0x0122."""
    serve = assoc._serve_request

    def serve_request(msg: Any, context_id: int) -> None:
        context = assoc._accepted_cx.get(context_id)
        rsp = None if context is None else refusal(msg, str(context.abstract_syntax))
        if rsp is None:
            serve(msg, context_id)
            return
        log.info(
            "DICOM %s for SOP Class %s on a %s context refused (0x0122)",
            type(msg).__name__, rsp.AffectedSOPClassUID, context.abstract_syntax,
        )  # fmt: skip
        assoc.dimse.send_msg(rsp, context_id)

    assoc._serve_request = serve_request
