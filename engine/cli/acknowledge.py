"""``radbridge messages ack``: the operator dealt with messages answered AE/AR; status stops counting them.

``radbridge status`` lists every channel's AE/AR messages under "needs attention" until they are
replayed successfully. Many never will be: the sender fixed and resent the message under a new
control id, it was a test, or it is refused by design. Acknowledging one sets its
``acknowledged_at`` (the message, its error and its ACK are kept, and ``messages list --status ERROR``
still lists it) and records a ``message.ack`` audit event with the operator's account, in the same
transaction. A replay clears it again: its outcome is new.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, text, update

from engine.audit import Actor, record
from engine.store.schema import UNPROCESSED_SQL, messages

__all__ = ["Acknowledged", "acknowledge"]

_REFUSED = ("ERROR", "REJECTED")
#: Ids per UPDATE: ``--all-before`` may find any number of messages.
_SLICE = 1000


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """What one ``messages ack`` did: the ids it acknowledged, and why the others it named were not."""

    ids: tuple[int, ...]
    reasons: tuple[str, ...] = ()


def _named(conn: Connection, ids: list[int]) -> tuple[list[int], list[str]]:
    """Of ``ids``: those to acknowledge, and why each other is not (unknown, not AE/AR, already)."""
    found = {r.id: r for r in conn.execute(select(messages.c.id, messages.c.status, messages.c.acknowledged_at)
                                           .where(messages.c.id.in_(ids)))}
    todo, reasons = [], []
    for message_id in dict.fromkeys(ids):
        row = found.get(message_id)
        if row is None:
            reasons.append(f"{message_id}: no such message")
        elif row.status not in _REFUSED:
            reasons.append(f"{message_id}: not answered AE/AR ({row.status}); nothing to acknowledge")
        elif row.acknowledged_at is not None:
            reasons.append(f"{message_id}: already acknowledged at {row.acknowledged_at.isoformat()}")
        else:
            todo.append(message_id)
    return todo, reasons


def _before(conn: Connection, before: datetime, channel: str | None) -> list[int]:
    """The unacknowledged AE/AR messages received before ``before`` (of ``channel``)."""
    query = (select(messages.c.id).where(text(UNPROCESSED_SQL), messages.c.status.in_(_REFUSED),
                                         messages.c.acknowledged_at.is_(None), messages.c.received_at < before)
             .order_by(messages.c.id))
    if channel is not None:
        query = query.where(messages.c.channel == channel)
    return [int(r.id) for r in conn.execute(query)]


def acknowledge(conn: Connection, ids: list[int], before: datetime | None, channel: str | None, now: datetime,
                actor: Actor | None = None) -> Acknowledged:
    """Acknowledge the AE/AR messages ``ids`` (or every one received before ``before``, of ``channel`` if
    given), with a ``message.ack`` audit event naming them, in the caller's transaction."""
    if ids:
        todo, reasons = _named(conn, ids)
    else:
        assert before is not None
        todo, reasons = _before(conn, before, channel), []
    for start in range(0, len(todo), _SLICE):  # bound parameters are limited (PostgreSQL: 65,535)
        conn.execute(update(messages).where(messages.c.id.in_(todo[start:start + _SLICE]),
                                            messages.c.acknowledged_at.is_(None)).values(acknowledged_at=now))
    query: dict[str, Any] = {"ids": ids} if ids else {"before": before, "channel": channel}
    object_id = ",".join(map(str, todo))[:128] if ids else f"before {before.isoformat() if before else ''}"
    record(conn, "message.ack", "message", object_id, {"query": query, "message_ids": todo}, actor)
    return Acknowledged(tuple(todo), tuple(reasons))
