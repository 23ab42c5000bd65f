"""What a C-STORE response status means for a delivery (PS3.4 B.2.3, PS3.7 Annex C).

Success and warnings deliver the instance. Failures are retryable where the
peer may recover (out of resources, a processing failure, a cancel, any status
the table does not know) and permanent where sending the same bytes again
cannot help (the data set does not match the SOP class, the peer cannot
understand it, the SOP class is not supported, the instance is a duplicate the
peer refuses). A permanent failure ends the outbox row in ERROR (dead letter)
at once; ``radbridge outbox replay`` puts it back once the cause is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Outcome", "StatusMeaning", "classify_store_status"]


class Outcome(Enum):
    """What the outbox does with a response."""

    DELIVERED = "delivered"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class StatusMeaning:
    """A status code's outcome and its meaning in the standard's words."""

    outcome: Outcome
    meaning: str


#: (first, last, outcome, meaning), first match wins; ranges per PS3.4 B.2.3 and PS3.7 C.
_TABLE: tuple[tuple[int, int, Outcome, str], ...] = (
    (0x0000, 0x0000, Outcome.DELIVERED, "success"),
    (0x0001, 0x0001, Outcome.DELIVERED, "warning: requested optional attributes are not supported"),
    (0x0107, 0x0107, Outcome.DELIVERED, "warning: attribute list error"),
    (0x0116, 0x0116, Outcome.DELIVERED, "warning: attribute value out of range"),
    (0xB000, 0xB000, Outcome.DELIVERED, "warning: coercion of data elements"),
    (0xB006, 0xB006, Outcome.DELIVERED, "warning: elements discarded"),
    (0xB007, 0xB007, Outcome.DELIVERED, "warning: data set does not match SOP class"),
    (0xB001, 0xBFFF, Outcome.DELIVERED, "warning"),
    (0xA700, 0xA7FF, Outcome.RETRYABLE, "refused: out of resources"),
    (0xA900, 0xA9FF, Outcome.PERMANENT, "error: data set does not match SOP class"),
    (0xC000, 0xCFFF, Outcome.PERMANENT, "error: cannot understand"),
    (0x0111, 0x0111, Outcome.PERMANENT, "failure: duplicate SOP instance"),
    (0x0117, 0x0117, Outcome.PERMANENT, "failure: invalid SOP instance"),
    (0x0122, 0x0122, Outcome.PERMANENT, "refused: SOP class not supported"),
    (0x0124, 0x0124, Outcome.PERMANENT, "refused: not authorized"),
    (0x0210, 0x0213, Outcome.PERMANENT, "failure: DIMSE protocol error"),
    (0x0110, 0x0110, Outcome.RETRYABLE, "failure: processing failure"),
    (0xFE00, 0xFE00, Outcome.RETRYABLE, "cancelled"),
)


def classify_store_status(status: int) -> StatusMeaning:
    """The outcome of a C-STORE response ``status``; an unknown failure is retryable.

    Retrying an unknown failure is the safe choice: the row still ends in ERROR after
    ``retry.max_attempts`` and nothing is dropped.
    """
    for first, last, outcome, meaning in _TABLE:
        if first <= status <= last:
            return StatusMeaning(outcome, meaning)
    return StatusMeaning(Outcome.RETRYABLE, "failure: status not known to radbridge")
