"""Reprocessing a stored message in place (``radbridge messages replay``).

A message that ended in ERROR or REJECTED is run again through its channel's
current pipeline (validation, filter, mapping, handlers, destinations: the very
code live traffic runs, :meth:`ChannelRunner.open` then
:meth:`Persister.apply`), and its own row, same id, takes the new outcome.

Exactly-once effect: one transaction reads the row (locked on PostgreSQL),
checks that it is still ERROR or REJECTED, applies it, updates the row and
records the attempt. A second replay finds the new status and changes nothing;
a crash before the commit leaves everything as it was. A message that another
copy (same sender, control id and content) has applied since is marked
UNCHANGED with that copy's ACK, never applied twice.

Attempts (:data:`~engine.store.schema.message_attempts`): the first replay
first writes attempt 1 from the row as its receipt left it (receiving costs no
extra row), then its own; ``messages show`` lists them.

Fragments are not replayed: what the listener kept of junk between frames, an
abandoned frame or an oversize frame (their first bytes) is not a message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from engine.audit import Actor, record
from engine.channel.prepare import ERROR, REJECTED, Prepared
from engine.channel.runner import OVERSIZE_TEXT, ChannelRunner
from engine.hl7.er7 import Message
from engine.outbox.rows import replay as requeue
from engine.store.schema import message_attempts, messages

__all__ = ["REPLAYABLE", "Replayed", "RunnerOf", "attempts", "replay_message"]

#: The channel's runner built from the current configuration, by channel name (None: no such channel).
RunnerOf = Callable[[str], ChannelRunner | None]

#: The statuses a replay reprocesses; any other (accepted) message only gets its failed deliveries re-queued.
REPLAYABLE = (ERROR, REJECTED)

#: What a replay rewrites on the row: everything the pipeline decides, not how or when it arrived.
_KEPT = ("channel", "received_at", "peer", "raw", "duplicate_count", "last_duplicate_at")

_OUTCOME = (messages.c.status, messages.c.ack_code, messages.c.ack, messages.c.error_code,
            messages.c.error_location, messages.c.error, messages.c.note)


@dataclass(frozen=True, slots=True)
class Replayed:
    """What one replay did. ``attempt`` is 0 when nothing was reprocessed (``refused`` says why)."""

    message_id: int
    before: str
    after: str
    ack_code: str
    attempt: int = 0
    requeued: int = 0
    refused: str = ""

    @property
    def accepted(self) -> bool:
        """Reprocessed and answered AA/CA, or not reprocessable because it had been accepted already."""
        return not self.refused and self.ack_code in ("AA", "CA")


def replay_message(
    conn: Connection, message_id: int, runner_of: RunnerOf, actor: Actor, now: datetime
) -> Replayed | None:
    """Replay ``message_id`` in the caller's transaction; None when there is no such message.

    ``runner_of(channel_name)`` gives the channel's :class:`ChannelRunner` built from the
    current configuration, or None when the channel is no longer configured. Failed
    deliveries of the message go back in the queue whatever its status. The replay is
    audited (``message.replay``) with ``actor`` and what it did.
    """
    row = conn.execute(select(messages).where(messages.c.id == message_id).with_for_update()).first()
    if row is None:
        return None
    requeued = requeue(conn, message_ids=[message_id], now=now)
    done = _reprocess(conn, row, runner_of, actor, now)
    done = Replayed(done.message_id, done.before, done.after, done.ack_code, done.attempt, requeued, done.refused)
    record(conn, "message.replay", "message", str(message_id),
           {"before": done.before, "after": done.after, "attempt": done.attempt, "requeued": requeued,
            "refused": done.refused}, actor)
    return done


def _reprocess(conn: Connection, row: Row[Any], runner_of: RunnerOf, actor: Actor, now: datetime) -> Replayed:
    unchanged = Replayed(row.id, row.status, row.status, row.ack_code)
    if row.status not in REPLAYABLE:
        return unchanged
    why = _not_a_message(row)
    runner: ChannelRunner | None = None if why else runner_of(row.channel)
    if runner is None:
        why = why or f"channel {row.channel!r} is no longer configured"
        return Replayed(row.id, row.status, row.status, row.ack_code, refused=why)
    prepared = _prepared(runner, row)
    if isinstance(prepared, str):
        return Replayed(row.id, row.status, row.status, row.ack_code, refused=prepared)
    number = _first_attempt(conn, row)
    _apply(conn, row, runner, prepared, now)
    after = conn.execute(select(*_OUTCOME).where(messages.c.id == row.id)).one()
    conn.execute(insert(message_attempts).values(
        message_id=row.id, attempt=number + 1, at=now, via="replay", actor=actor.user[:128],
        **after._mapping))
    return Replayed(row.id, row.status, after.status, after.ack_code, number + 1)


def _not_a_message(row: Row[Any]) -> str:
    """Why the row's bytes cannot be reprocessed, or "" when they can."""
    if row.text == "":
        return "the stored bytes are not a message (kept from a refused frame, nothing in it was read)"
    if row.status == REJECTED and row.error.startswith(OVERSIZE_TEXT):
        return "the stored bytes are the first bytes of an oversize frame, not the whole message"
    return ""


def _prepared(runner: ChannelRunner, row: Row[Any]) -> Prepared | str:
    """The row's raw bytes through the channel's pure pipeline, as a receiving listener would.

    A payload refused as a whole (a broken batch envelope) is refused again as the listener
    does (:meth:`ChannelRunner.receive`); a str says why the bytes cannot be replayed at all.
    """
    opened = runner.open(row.raw)
    failure = opened.failure
    if failure is not None:
        text = opened.decoded.text if opened.split is None else ""
        status = REJECTED if failure.ack_code == "AR" else ERROR
        return Prepared(Message(text), row.raw, opened.decoded.charset, status, error=failure)
    if len(opened.prepared) != 1:  # only a refused batch is stored whole, and it is refused above
        return f"the stored bytes hold {len(opened.prepared)} messages; replay replays one"
    return opened.prepared[0]


def _apply(conn: Connection, row: Row[Any], runner: ChannelRunner, p: Prepared, now: datetime) -> None:
    """Persist ``p`` onto ``row``: the live path's duplicate check, row values and handlers."""
    persister = runner.persister
    original = persister.duplicate(conn, p, now)
    if original is not None:  # another copy was applied since: this one must not be
        conn.execute(update(messages).where(messages.c.id == row.id).values(
            status="UNCHANGED", ack_code=original.ack_code, ack=original.ack, error_code=None, error_location="",
            error="", note=f"the same message as message {original.message_id}, which applied it: not applied again"))
        return
    code = "AA" if p.error is None else p.error.ack_code
    ack = persister.ack(p.message, code, p.error, now)
    values = persister.values(p, row.peer, now, code, ack)
    conn.execute(update(messages).where(messages.c.id == row.id)  # its outcome is new: not acknowledged
                 .values({**{k: v for k, v in values.items() if k not in _KEPT}, "acknowledged_at": None}))
    persister.apply(conn, p, row.id, now, ack, code)


def _first_attempt(conn: Connection, row: Row[Any]) -> int:
    """The number of the last attempt recorded; writes attempt 1 (the receipt) from the row if none is."""
    last = conn.execute(select(func.max(message_attempts.c.attempt))
                        .where(message_attempts.c.message_id == row.id)).scalar()
    if last is not None:
        return int(last)
    conn.execute(insert(message_attempts).values(
        message_id=row.id, attempt=1, at=row.received_at, via="receive", actor=f"peer {row.peer}"[:128],
        status=row.status, ack_code=row.ack_code, error_code=row.error_code, error_location=row.error_location,
        error=row.error, note=row.note, ack=row.ack))
    return 1


def attempts(conn: Connection, row: Row[Any] | Any) -> list[dict[str, Any]]:
    """Every attempt at ``row`` (a ``messages`` row), oldest first; the receipt alone if it was never replayed."""
    a = message_attempts.c
    found = conn.execute(select(a.attempt, a.at, a.via, a.actor, a.status, a.ack_code, a.error_code,
                                a.error_location, a.error, a.note)
                         .where(a.message_id == row.id).order_by(a.attempt)).all()
    if found:
        return [dict(r._mapping) for r in found]
    return [{"attempt": 1, "at": row.received_at, "via": "receive", "actor": f"peer {row.peer}",
             "status": row.status, "ack_code": row.ack_code, "error_code": row.error_code,
             "error_location": row.error_location, "error": row.error, "note": row.note}]
