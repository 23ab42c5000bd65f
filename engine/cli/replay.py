"""``radbridge messages replay``: re-queue failed deliveries, reprocess failed messages.

A message that ended in ERROR or REJECTED is run through its channel again
(current configuration and mapping), as a new stored message; its failed
outbox deliveries, if any, go back in the queue with their attempts reset.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, Row, select

from engine.audit import record
from engine.channel.persist import Persister
from engine.channel.prepare import Preparer
from engine.channel.runner import ChannelRunner
from engine.config import Config
from engine.handlers import create_handler
from engine.hl7.charset import decode
from engine.hl7.er7 import Message
from engine.outbox.rows import replay
from engine.plan import build_plan
from engine.store.database import Database
from engine.store.schema import messages

__all__ = ["replay_messages"]


def _runner(config: Config, db: Database, channel_name: str) -> ChannelRunner | None:
    channel = next((c for c in config.channels if c.name == channel_name), None)
    if channel is None:
        return None
    plan = build_plan(config)
    mapping = plan.mappings.get(channel.name)
    handlers = plan.handlers.get(channel.name) or [create_handler(h, config.engine, channel) for h in channel.handlers]
    ident = config.engine.identity
    persister = Persister(channel, handlers, ident.application, ident.facility)
    return ChannelRunner(channel, Preparer(channel, mapping), persister, db)


def _original(conn: Connection, message_id: int) -> Row[Any, Any, Any] | None:
    query = select(messages.c.channel, messages.c.status, messages.c.raw).where(messages.c.id == message_id)
    return conn.execute(query).first()


def replay_messages(config: Config, db: Database, ids: list[int]) -> int:
    """Replay each id; return 1 if any id was unknown or its reprocessing was not accepted."""
    failures = 0
    for message_id in ids:
        row = db.read(partial(_original, message_id=message_id))
        if row is None:
            print(f"{message_id}: no such message")
            failures += 1
            continue
        requeued = db.writer.call(partial(replay, message_ids=[message_id], now=datetime.now(UTC)))
        db.writer.call(partial(record, action="message.replay", object_type="message", object_id=str(message_id)))
        line = f"{message_id}: {requeued} delivery(ies) re-queued"
        if row.status in ("ERROR", "REJECTED"):
            runner = _runner(config, db, row.channel)
            if runner is None:
                line += f"; channel {row.channel!r} is no longer configured, not reprocessed"
                failures += 1
            else:
                answer = asyncio.run(runner.receive(row.raw, "replay"))
                msa = Message(decode(answer).text).segment("MSA")
                code = msa.value(1) if msa else "?"
                line += f"; reprocessed: {code}"
                failures += code not in ("AA", "CA")
        print(line)
    return 1 if failures else 0
