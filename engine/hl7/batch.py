"""Splitting a received payload into messages (HL7 v2.5.1 2.10.3, batch protocol).

One MLLP frame may carry a single message, a batch (BHS … BTS), a file of
batches (FHS … FTS), or several messages back to back with no envelope.
:func:`split_messages` returns the messages' texts and whether the payload was
a batch, or raises :class:`BatchError` for envelopes that break the rules
(a BHS inside a batch, segments between BHS and the first MSH, unbalanced headers).

Lines before the frame's first header (MSH, BHS or FHS) cannot belong to any
message: a segment follows its MSH. They are skipped, and so are spaces and
control characters before that header on its own line, and lines of nothing
but control characters anywhere (no segment is made of them); the split says
so in ``notes``. A frame with no header at all is left whole, for validation
to refuse.

The trailers' counts (BTS-1 messages in the batch, FTS-1 batches in the file) are
checked but never refuse: the messages are what was received, and a sender's wrong
count is its own bookkeeping. A count that does not match (or cannot be read) is
said in ``batch_notes``, which belong to every message of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import ErrorLocation, HL7ApplicationError
from engine.hl7.er7 import normalize_segment_breaks

__all__ = ["BatchError", "Split", "split_messages"]

_ENVELOPE = ("FHS", "BHS", "BTS", "FTS")
_HEADERS = ("MSH", "BHS", "FHS")
#: What may stand before the first header on its line: spaces and C0 controls (NUL padding,
#: a repeated start block), never text.
_LEADING_JUNK = "".join(map(chr, range(0x20))) + " \x7f"
#: Characters of a skipped line shown in its note (the whole frame stays in ``raw``).
_SHOWN = 40


class BatchError(HL7ApplicationError):
    """The batch envelope is malformed (table 0357 code 100)."""

    def __init__(self, text: str, segment: str, sequence: int = 1) -> None:
        super().__init__(100, text, ErrorLocation(segment, sequence))


@dataclass(slots=True)
class Split:
    """The messages found in one payload."""

    messages: list[str] = field(default_factory=list)
    batch: bool = False
    header: str = ""  # the BHS (or FHS) line when batched
    notes: list[str] = field(default_factory=list)  # what was skipped before the first header
    batch_notes: list[str] = field(default_factory=list)  # trailer counts that do not match (every message's)


def split_messages(text: str) -> Split:
    """Split decoded payload text into message texts (CR-terminated)."""
    normalized = normalize_segment_breaks(text.lstrip("\ufeff"))
    written = normalized.split("\r")
    # One pass drops empty lines and lines of controls only; the latter (rare) are noted below.
    lines = [line for line in written if line.strip(_LEADING_JUNK)]
    result = Split()
    if "\n" in normalized:
        result.notes.append(f"kept {normalized.count(chr(10))} line feed(s) inside fields: no segment follows them")
    if len(lines) + written.count("") < len(written):
        _note_control_lines(written, result.notes)
    lines = _skip_to_first_header(lines, result.notes)
    current: list[str] = []
    open_batch = open_file = 0
    batch_start = file_start = file_batches = 0  # where the open batch / file began; BHS seen in the file
    for number, line in enumerate(lines, start=1):
        tag = line[:3]
        if tag in _ENVELOPE:
            open_batch, open_file = _envelope(tag, number, current, open_batch, open_file)
            result.batch = True
            if tag in ("BHS", "FHS"):
                if current:
                    result.messages.append(_join(current))
                    current = []
                result.header = result.header or line
            if tag in ("BTS", "FTS") and current:
                result.messages.append(_join(current))
                current = []
            if tag == "BHS":
                batch_start, file_batches = len(result.messages), file_batches + 1
            elif tag == "FHS":
                file_start, file_batches = len(result.messages), 0
            elif tag == "BTS":
                _check_count(line, len(result.messages) - batch_start, "message(s)", "batch", result.batch_notes)
            else:  # FTS: batches, or the messages of a file without BHS (senders count those)
                held = file_batches or len(result.messages) - file_start
                if file_batches or _count(line) != 1:
                    _check_count(line, held, "batch(es)" if file_batches else "message(s)", "file",
                                 result.batch_notes)
            continue
        if tag == "MSH":
            if current:
                result.messages.append(_join(current))
            current = [line]
        elif current:
            current.append(line)
        elif line.strip():
            if result.batch:
                raise BatchError(f"segment {tag!r} before the first MSH of the batch", tag, number)
            current = [line]
    if current:
        result.messages.append(_join(current))
    if open_batch or open_file:
        result.batch = True
    if len(result.messages) > 1:
        result.batch = True
    return result


def _count(trailer: str) -> int | None:
    """BTS-1 / FTS-1 as a number; None when empty or not a number (ASCII digits only: ``str.isdigit`` also
    takes '²', which ``int`` refuses; and at most 18 of them, ``int`` refuses more than 4,300)."""
    value = trailer[4:].split(trailer[3], 1)[0].strip() if len(trailer) > 4 else ""
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None


def _check_count(trailer: str, held: int, what: str, where: str, notes: list[str]) -> None:
    """Note a trailer count that is not what the batch or file holds (an empty count says nothing)."""
    tag = trailer[:3]
    raw = trailer[4:].split(trailer[3], 1)[0].strip() if len(trailer) > 4 else ""
    if not raw:
        return
    count = _count(trailer)
    if count is None:
        notes.append(f"{tag}-1 {raw[:_SHOWN]!r} is not a {'message' if tag == 'BTS' else 'batch'} count "
                     f"(the {where} holds {held})")
    elif count != held:
        notes.append(f"{tag}-1 says {count} {what}, the {where} holds {held} (accepted as received)")


def _note_control_lines(lines: list[str], notes: list[str]) -> None:
    """Note the lines of control characters only (NUL padding, a stray Ctrl-Z) that the split skips.

    Lines of spaces only are skipped without a note, as empty lines are.
    """
    controls = [line for line in lines if line.strip() and not line.strip(_LEADING_JUNK)]
    if controls:
        notes.append(f"skipped {len(controls)} line(s) of control characters only, the first: "
                     f"{controls[0][:_SHOWN]!r}")


def _skip_to_first_header(lines: list[str], notes: list[str]) -> list[str]:
    """``lines`` from the first header on, noting what was skipped; unchanged without a header."""
    first = lines[0] if lines else ""
    if first[:3] in _HEADERS and len(first) > 3 and not first[3].isalnum():
        return lines  # the common case, a frame that starts with its header: no copy
    for index, line in enumerate(lines):
        header = line.lstrip(_LEADING_JUNK)
        if not (header.startswith(_HEADERS) and len(header) > 3 and not header[3].isalnum()):
            continue
        skipped = lines[:index]
        if skipped:
            notes.append(f"skipped {len(skipped)} line(s) before {header[:3]}, the first: {skipped[0][:_SHOWN]!r}")
        if header != line:
            notes.append(f"skipped {len(line) - len(header)} character(s) before {header[:3]} on its line: "
                         f"{line[: len(line) - len(header)][:_SHOWN]!r}")
        return [header, *lines[index + 1 :]]
    return lines


def _envelope(tag: str, number: int, current: list[str], batches: int, files: int) -> tuple[int, int]:
    if tag == "FHS":
        if files:
            raise BatchError("FHS inside an open file", tag, number)
        return batches, files + 1
    if tag == "BHS":
        if batches:
            raise BatchError("BHS inside an open batch", tag, number)
        return batches + 1, files
    if tag == "BTS":
        if not batches:
            raise BatchError("BTS without BHS", tag, number)
        return batches - 1, files
    if not files:
        raise BatchError("FTS without FHS", tag, number)
    return batches, files - 1


def _join(lines: list[str]) -> str:
    return "\r".join(lines) + "\r"
