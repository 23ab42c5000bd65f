"""Building original-mode acknowledgments (HL7 v2.5.1 2.9.2 and 2.14.1).

The ACK's MSH swaps sending and receiving application/facility, keeps the
processing id, version and character set of the message it answers, and uses
the same encoding characters. MSA-2 echoes MSH-10. An error carries an ERR
segment with ERR-2 location (``SEG^seq^field^comp``), ERR-3 the table 0357
code and ERR-4 severity; for versions before 2.5, ERR-1 carries the same in
the older ELD form so that v2.3 receivers see it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from engine.errors import TABLE_0357, HL7Error
from engine.hl7.er7 import Message, Separators, escape
from engine.hl7.structure import reference_version

__all__ = ["AckContext", "build_ack", "timestamp"]


@dataclass(frozen=True, slots=True)
class AckContext:
    """What the ACK needs besides the message: who we are and the new control id."""

    control_id: str
    now: datetime
    application: str = "RADBRIDGE"
    facility: str = ""
    default_version: str = "2.5.1"


def timestamp(now: datetime) -> str:
    """HL7 DTM with seconds and UTC offset (formatted once per second and zone)."""
    # The offset is part of the key: aware datetimes of the same instant in different zones
    # compare (and hash) equal, and would otherwise get whichever offset was cached first.
    return _timestamp(now.replace(microsecond=0), now.utcoffset())


@lru_cache(maxsize=8)
def _timestamp(second: datetime, offset: timedelta | None) -> str:
    return second.strftime("%Y%m%d%H%M%S%z")


def build_ack(
    message: Message | None,
    code: str,
    context: AckContext,
    error: HL7Error | None = None,
) -> str:
    """The ACK text (CR-terminated segments) answering ``message`` with MSA-1 ``code``."""
    msh = message.msh if message is not None else None
    if msh is not None and not (msh.seps.valid and msh.field(2) == msh.seps.encoding_characters):
        msh = None  # a broken envelope: answer with standard delimiters and our own identity
    seps = message.seps if message is not None and msh is not None else Separators()
    f = seps.field
    if msh is not None:
        sender = [msh.field(5) or escape(context.application, seps), msh.field(6)]
        receiver = [msh.field(3), msh.field(4)]
        # Padded fields (a fixed-width sender's "2.3 ") are echoed as the values they stand for.
        processing = msh.field(11).strip() or "P"
        version = msh.field(12).strip() or context.default_version
        trigger = msh.value(9, 1, 2)
        charset = msh.field(18)
        echoed = msh.value(10)
    else:
        sender = [escape(context.application, seps), escape(context.facility, seps)]
        receiver = ["", ""]
        processing, version, trigger, charset, echoed = "P", context.default_version, "", "", ""
    c = seps.component
    header = [
        "MSH",
        seps.encoding_characters,
        *sender,
        *receiver,
        timestamp(context.now),
        "",
        f"ACK{c}{trigger}{c}ACK" if trigger else f"ACK{c}{c}ACK",
        escape(context.control_id, seps),
        processing,
        version,
    ]
    if charset:
        header += ["", "", "", "", "", charset]
    text = escape(error.text, seps) if error else ""
    segments = [f.join(header), f.join(["MSA", code, echoed, text][: 4 if text else 3])]
    if error is not None:
        segments.append(_err(error, seps, version))
    return "\r".join(segments) + "\r"


def _err(error: HL7Error, seps: Separators, version: str) -> str:
    c, s = seps.component, seps.subcomponent
    location = c.join(str(error.location).split("^")) if error.location else ""
    display = escape(TABLE_0357.get(error.code, ""), seps)
    code = f"{error.code}{c}{display}{c}HL70357"
    ref = reference_version(version) or "2.5"
    legacy = ""
    if ref < "2.5" and error.location is not None:
        legacy = c.join([*str(error.location).split("^")[:3], f"{error.code}{s}{display}{s}HL70357"])
    fields = ["ERR", legacy, location, code, "E", "", "", "", escape(error.text, seps)]
    return seps.field.join(fields)
