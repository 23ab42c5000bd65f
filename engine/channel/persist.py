"""The transactional half of a channel: one function run by the writer per message.

In one transaction: look for a resent duplicate, write the message row (with
the mapped records), run the handlers (in a savepoint, so an AE undoes their
changes but keeps the message), enqueue outbound work, and return the ACK.
The caller sends the ACK only after the writer reports the commit.

What the handlers left alone is said on the row: their notes go to ``note``,
after what the reader tolerated to read the message (a timestamp outside the
grammar, a stray line before MSH), and a message whose every outcome changed
nothing is UNCHANGED (still AA).
A message the channel's mapping turned into nothing, that no handler reported
on and no destination takes, is refused with AR 200: nothing would be done.

Several engine processes may share one PostgreSQL database: two of them can
create the same new row at once (the same new patient in an ADT on one and an
order on the other). The second insert waits for the first transaction and
then fails on the unique key; the handlers then run again from their
savepoint and find the committed row, instead of answering AE for a message
that has nothing wrong with it.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic_core import PydanticSerializationError, to_json
from sqlalchemy import Connection, bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError

from engine.channel.prepare import ERROR, FILTERED, PROCESSED, REJECTED, Prepared
from engine.config.models import ChannelConfig
from engine.errors import ErrorLocation, HL7ApplicationError, HL7Error, HL7Reject
from engine.handlers import Handler, InboundContext, Outbound, Outcome
from engine.hl7.ack import AckContext, build_ack
from engine.hl7.er7 import Message
from engine.outbox.queue import enqueue
from engine.store.database import RunAgain
from engine.store.fast import FastInsert, FastStatement, Savepoint
from engine.store.schema import messages

__all__ = ["UNCHANGED", "Attempt", "HandlersFailed", "Persister", "Stored"]

log = logging.getLogger(__name__)

#: Accepted (AA), but the handlers changed nothing; ``note`` says why.
UNCHANGED = "UNCHANGED"
_ACCEPTED = (PROCESSED, FILTERED, UNCHANGED)
_ACK_PREFIX = uuid.uuid4().hex[:8]
_ACK_COUNTER = itertools.count(1)

# Statements are built once: SQLAlchemy then reuses their compiled form, which
# is most of the per-message SQL cost on the receive path.
_FIND_ORIGINAL = FastStatement(
    select(messages.c.id, messages.c.body_hash, messages.c.ack, messages.c.ack_code)
    .where(
        messages.c.channel == bindparam("channel"),  # a resend comes back to its own channel
        messages.c.sender == bindparam("sender"),
        messages.c.control_id == bindparam("control_id"),
        or_(*(messages.c.status == status for status in _ACCEPTED)),
        messages.c.received_at >= bindparam("since"),
    )
    .order_by(messages.c.id)
    .limit(1)
)
_COUNT_DUPLICATE = (
    update(messages)
    .where(messages.c.id == bindparam("row_id"))
    .values(duplicate_count=messages.c.duplicate_count + 1, last_duplicate_at=bindparam("now"))
)
_INSERT_MESSAGE = FastInsert(messages)
#: How often the handlers of one message may run when another process inserted a row they
#: were inserting (each run after the first finds the rows committed before it started).
CONFLICT_ATTEMPTS = 3


class HandlersFailed(RunAgain):
    """A ``sole`` attempt's handlers failed: the writer rolls the transaction back and runs the
    :class:`Attempt` once more, alone and before anything queued after it, now with the savepoint,
    which records the failure (AE/AR, the message kept as ERROR/REJECTED) exactly as a first
    attempt with the savepoint would."""


#: After a failed optimistic attempt, a channel's messages keep their savepoint this long: a feed
#: of failing messages must not make every shared transaction run twice.
CAREFUL_SECONDS = 5.0
_clock = time.monotonic  # the clock of that window (tests replace it, not the time module's)


class Attempt:
    """:meth:`Persister.persist` of one message as the writer's unit of work, optimistic first.

    Without the handlers' savepoint (``sole``), on SQLite, when the channel has had no handler
    failure for :data:`CAREFUL_SECONDS`: if the handlers fail, the whole transaction (the writer's group
    commit, or the inline one) rolls back and the writer runs this again alone, with the
    savepoint. A group whose transaction rolls back is retried item by item in order, so
    no message overtakes another; what commits is what the careful path commits.
    """

    __slots__ = ("peer", "persister", "prepared", "sole")

    def __init__(self, persister: Persister, prepared: Prepared, peer: str) -> None:
        self.persister, self.prepared, self.peer = persister, prepared, peer
        self.sole = _clock() >= persister.careful_until

    @property
    def log_label(self) -> str:
        """The message as a log line may name it below DEBUG: its channel and control id (docs/security.md)."""
        return f"channel {self.persister.config.name} control id {self.prepared.message.control_id or '(none)'}"

    def __call__(self, conn: Connection) -> Stored:
        # SQLite only: there the savepoint costs a statement journal, and a rolled-back attempt
        # leaves no trace (PostgreSQL's sequences would skip the ids it drew).
        sole = self.sole and conn.dialect.name == "sqlite"
        try:
            return self.persister.persist(conn, self.prepared, self.peer, sole=sole)
        except HandlersFailed:
            self.sole = False
            self.persister.careful_until = _clock() + CAREFUL_SECONDS
            raise


@dataclass(frozen=True, slots=True)
class Stored:
    """What the writer returns for one message."""

    message_id: int
    ack: str
    ack_code: str
    duplicate: bool = False
    enqueued: int = 0
    refusal: str = ""  # an AE/AR's ERR code and location ("103 at OBR^1^4"): no message content, for the log


def _refusal(error: HL7Error | None) -> str:
    if error is None:
        return ""
    return f"{error.code} at {error.location}" if error.location else str(error.code)


class Persister:
    """Writes prepared messages of one channel."""

    def __init__(
        self, config: ChannelConfig, handlers: list[Handler], application: str, facility: str
    ) -> None:
        self.config = config
        self.handlers = handlers
        self.application = application
        self.facility = facility
        self.careful_until = 0.0  # monotonic time until which Attempt keeps the handlers' savepoint

    def ack(
        self, message: Message | None, code: str, error: HL7Error | None = None, now: datetime | None = None
    ) -> str:
        """An ACK from this channel with a fresh control id (process prefix + counter, ≤ 20 chars)."""
        at = now or datetime.now(UTC)
        ctx = AckContext(f"{_ACK_PREFIX}{next(_ACK_COUNTER)}", at, self.application, self.facility)
        return build_ack(message, code, ctx, error)

    def persist(self, conn: Connection, p: Prepared, peer: str, sole: bool = False) -> Stored:
        """Store ``p`` and apply it; return the ACK to send once committed.

        ``sole``: the handlers run without their savepoint (which makes SQLite copy every page
        they change into a statement journal: ~1.5 % of an order's cost) and a failure of theirs
        raises :class:`HandlersFailed` for the caller to roll the whole transaction back and call
        again without ``sole`` (:class:`Attempt` with the writer); what commits is the same.
        """
        now = datetime.now(UTC)
        duplicate = self.duplicate(conn, p, now)
        if duplicate is not None:
            return duplicate
        code = "AA" if p.error is None else p.error.ack_code
        ack = self.ack(p.message, code, p.error, now)
        message_id = _INSERT_MESSAGE.execute(conn, self.values(p, peer, now, code, ack))
        return self.apply(conn, p, message_id, now, ack, code, sole)

    def apply(self, conn: Connection, p: Prepared, message_id: int, now: datetime, ack: str, code: str,
              sole: bool = False) -> Stored:
        """Run the handlers and enqueue for ``p``, whose row ``message_id`` holds :meth:`values`.

        The second half of :meth:`persist`, shared with an in-place replay (engine.channel.replay).
        """
        if p.status != PROCESSED:
            return Stored(message_id, ack, code, refusal=_refusal(p.error))
        try:
            outbound, outcomes = self._run_handlers(conn, p, message_id, now, sole)
            learned = _learn_keys(p, outcomes)
            enqueued = self._enqueue(conn, p, message_id, outbound, now)
            if not (p.records or outcomes or enqueued) and self.handlers and self.config.mapping_names:
                raise HL7Reject(200, f"nothing on channel {self.config.name} applies {p.message.message_type}",
                                ErrorLocation("MSH", 1, 9, 1))
        except HL7Error as exc:
            return self._fail(conn, p, message_id, exc)
        ambiguity = learned.pop("note", "")
        self._note(conn, message_id, outcomes, [*p.notes, ambiguity] if ambiguity else p.notes, learned,
                   bool(ambiguity))
        return Stored(message_id, ack, code, enqueued=enqueued)

    def duplicate(self, conn: Connection, p: Prepared, now: datetime) -> Stored | None:
        """The accepted original of ``p`` when ``p`` is a resend of it (its duplicate count goes up).

        Only this channel's messages count: the same message sent to two channels (ADT for the
        worklist and for a forwarding channel) is applied by each.

        A reused control id with other content marks ``p`` ERROR (AE 205) when the channel says
        ``on_conflict: reject``; None then, as when there is no original.
        """
        window = self.config.duplicates.window_hours
        control_id = p.message.control_id
        if not control_id or window <= 0 or p.error is not None:
            return None
        since = now - timedelta(hours=window)
        found = _FIND_ORIGINAL.execute(conn, {"channel": self.config.name, "sender": p.sender,
                                               "control_id": control_id, "since": since})
        row = found.fetchone()
        if row is None:
            return None
        row_id, body_hash, ack, ack_code = row
        if body_hash == p.body_hash:
            conn.execute(_COUNT_DUPLICATE, {"row_id": row_id, "now": now})
            log.info("duplicate of message %s (control id %s) answered with the original ACK", row_id, control_id)
            return Stored(row_id, ack, ack_code, duplicate=True)
        if self.config.duplicates.on_conflict == "reject":
            p.status = ERROR
            p.error = HL7ApplicationError(
                205,
                f"control id {control_id} was already used for a different message",
                ErrorLocation("MSH", 1, 10),
            )
        return None

    def values(self, p: Prepared, peer: str, now: datetime, code: str, ack: str) -> dict[str, Any]:
        """The ``messages`` row of ``p`` as received from ``peer`` at ``now``, answered ``ack``."""
        m = p.message
        err = p.error
        values: dict[str, Any] = {
            "channel": self.config.name,
            "received_at": now,
            "peer": peer[:128],
            "status": p.status,
            "control_id": m.control_id[:199],
            "sender": p.sender[:256],
            "sending_application": m.sending_application[:227],
            "sending_facility": m.sending_facility[:227],
            "message_type": m.message_type[:32],
            "version": m.version[:16],
            "patient_id": p.patient_id,
            "accession_number": p.accession_number,
            "charset": p.charset[:32],
            "body_hash": p.body_hash,
            "raw": p.raw,
            "text": m.text,
            "ack_code": code,
            "ack": ack,
            "error_code": err.code if err else None,
            "error_location": str(err.location) if err and err.location else "",
            "error": err.text if err else "",
            "duplicate_count": 0,
            "last_duplicate_at": None,
            "mapped": _json(p.records) if p.records else "",
            "note": "\n".join(p.notes + ([f"{m.message_type} did not pass the channel's filter"]
                                         if p.status == FILTERED else [])),
        }
        # Every text but the channel's name comes from the message, the peer's address, the error or the
        # ACK (built from those): only when one of them holds a NUL can a column.
        if "\x00" in m.text or "\x00" in ack or "\x00" in peer or "\x00" in values["error"] \
                or "\x00" in values["note"]:
            for key, value in values.items():
                if isinstance(value, str) and "\x00" in value:
                    values[key] = value.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL; raw keeps it
        return values

    def _run_handlers(
        self, conn: Connection, p: Prepared, message_id: int, now: datetime, sole: bool = False
    ) -> tuple[list[Outbound], list[Outcome]]:
        if not self.handlers:
            return [], []
        if sole:  # no savepoint: any failure is the caller's to roll back and redo (persist's ``sole``)
            try:
                return self._apply_handlers(conn, p, message_id, now)
            except Exception as exc:
                raise HandlersFailed(message_id) from exc
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            savepoint = Savepoint(conn)
            try:
                out, outcomes = self._apply_handlers(conn, p, message_id, now)
            except HL7Error:
                savepoint.rollback()
                raise
            except Exception as exc:
                savepoint.rollback()
                if attempt < CONFLICT_ATTEMPTS and _unique_conflict(conn, exc):
                    log.info("message %s met a row another process inserted meanwhile: applying it again",
                             message_id)
                    continue
                log.exception("handler failed on message %s", message_id)
                raise HL7ApplicationError(207, f"application internal error: {type(exc).__name__}") from exc
            savepoint.release()
            return out, outcomes
        raise AssertionError("the last attempt returns or raises")

    def _apply_handlers(
        self, conn: Connection, p: Prepared, message_id: int, now: datetime
    ) -> tuple[list[Outbound], list[Outcome]]:
        ctx = InboundContext(message_id, self.config.name, p.message, now, p.records)
        out: list[Outbound] = []
        for handler in self.handlers:
            out += handler.apply(conn, ctx)
        return out, ctx.outcomes

    @staticmethod
    def _note(conn: Connection, message_id: int, outcomes: list[Outcome], read: list[str],
              learned: dict[str, str] | None = None, read_new: bool = False) -> None:
        """Say on the row what changed nothing; UNCHANGED when nothing changed at all.

        ``read``: what the reader tolerated, already on the row; kept before the handlers' notes.
        ``learned``: the row's patient id / accession number the message lacked and its handlers found.
        ``read_new``: ``read`` holds a note not on the row yet (:func:`_learn_keys`' ambiguity).
        """
        notes: list[str] = []
        left_alone = 0  # a note may also explain a change (a waiting report attached): not counted
        unchanged = bool(outcomes)
        for o in outcomes:  # one loop: every message with handlers passes here
            if o.note:
                notes.append(o.note)
                left_alone += not o.changed
            unchanged = unchanged and not o.changed
        if not (notes or unchanged or learned or read_new):
            return  # the common case costs no statement
        values: dict[str, Any] = dict(learned or {})
        if notes or unchanged or read_new:
            values["note"] = "\n".join(read + notes)
        if unchanged:
            values["status"] = UNCHANGED
        conn.execute(update(messages).where(messages.c.id == message_id).values(**values))
        if not (notes or unchanged):
            return
        # The notes name order and accession numbers: INFO says only where to read them (engine.logs).
        if unchanged or left_alone:
            log.info("message %s %s: %d record(s) left alone, see `radbridge messages show %s`", message_id,
                     "changed nothing" if unchanged else "was partly applied", left_alone, message_id)
        else:
            log.info("message %s was applied with %d note(s), see `radbridge messages show %s`", message_id,
                     len(notes), message_id)
        log.debug("message %s notes: %s", message_id, "; ".join(notes))

    def _fail(self, conn: Connection, p: Prepared, message_id: int, exc: HL7Error) -> Stored:
        ack = self.ack(p.message, exc.ack_code, exc)
        conn.execute(
            update(messages)
            .where(messages.c.id == message_id)
            .values(
                status=REJECTED if exc.ack_code == "AR" else ERROR,  # as prepare marks a refused message
                ack_code=exc.ack_code,
                ack=ack,
                error_code=exc.code,
                error_location=str(exc.location) if exc.location else "",
                error=exc.text,
            )
        )
        return Stored(message_id, ack, exc.ack_code, refusal=_refusal(exc))

    def _enqueue(
        self, conn: Connection, p: Prepared, message_id: int, outbound: list[Outbound], now: datetime
    ) -> int:
        count = 0
        for dest in self.config.destinations:
            if not any(fnmatch.fnmatchcase(p.message.message_type, t) for t in dest.message_types):
                continue
            key = _ordering_key(p, dest.ordering_key)
            enqueue(conn, channel=self.config.name, destination=dest.name, payload=p.raw,
                    media_type="application/hl7-v2", ordering_key=key, message_id=message_id, now=now)
            count += 1
        for item in outbound:
            enqueue(conn, channel=self.config.name, destination=item.destination, payload=item.payload,
                    media_type=item.media_type, ordering_key=item.ordering_key, message_id=message_id, now=now)
            count += 1
        return count


def _unique_conflict(conn: Connection, exc: Exception) -> bool:
    """An integrity error from PostgreSQL: raised by SQLAlchemy or, on the fast path, by the driver.

    SQLite has one writer (no other process can insert meanwhile): there it is a bug, not a race.
    """
    if conn.dialect.name != "postgresql":
        return False
    dbapi = conn.dialect.dbapi
    return isinstance(exc, IntegrityError) or (dbapi is not None and isinstance(exc, dbapi.IntegrityError))


def _learn_keys(p: Prepared, outcomes: list[Outcome]) -> dict[str, str]:
    """The patient id and accession number ``p`` did not carry and its handlers found.

    Both come from one outcome, the first that names a patient (else the first that names an
    accession number) among those agreeing with what ``p`` named: a message without PID touching
    the orders of two patients is not listed under one's patient and the other's accession. Such a
    message's ambiguity goes to its notes (counts only, no identifiers). Set on ``p`` as well, so
    outbox ordering keys use them: an ORC-only cancel is ordered behind its patient's order, not on
    a key of its own.
    """
    learned: dict[str, str] = {}
    if p.patient_id and p.accession_number:
        return learned  # the common case: the message named both
    fits = [o for o in outcomes if (o.patient_id or o.accession_number)
            and (not p.patient_id or not o.patient_id or o.patient_id[:64] == p.patient_id)
            and (not p.accession_number or not o.accession_number or o.accession_number[:64] == p.accession_number)]
    if not fits:
        return learned
    source = next((o for o in fits if o.patient_id), fits[0])
    if not p.patient_id and source.patient_id:
        p.patient_id = learned["patient_id"] = source.patient_id[:64]
    if not p.accession_number and source.accession_number:
        p.accession_number = learned["accession_number"] = source.accession_number[:64]
    patients_seen = len({o.patient_id for o in fits if o.patient_id})
    accessions = len({o.accession_number for o in fits if o.accession_number})
    if patients_seen > 1 or accessions > 1:
        def count(n: int, what: str) -> str:
            return f"{n} {what}" + ("s" if n != 1 else "")

        learned["note"] = ("ambiguous keys: the message's records applied to the orders of "
                           f"{count(patients_seen, 'patient')} ({count(accessions, 'accession number')}); "
                           "the message is listed under the first order's")
    return learned


def _json(records: list[dict[str, Any]]) -> str:
    """The mapped records as JSON text: pydantic-core's encoder (~5x faster), json for what it refuses."""
    try:
        return to_json(records, fallback=str).decode()
    except PydanticSerializationError:  # e.g. a lone surrogate kept from undecodable input
        return json.dumps(records, default=str)


def _ordering_key(p: Prepared, kind: str) -> str:
    if kind == "patient_id":
        return p.patient_id
    if kind == "accession_number":
        return p.accession_number
    if kind == "control_id":
        return p.message.control_id
    return ""
