"""``radbridge messages replay``: reprocess failed messages in place, re-queue failed deliveries.

A message that ended in ERROR or REJECTED is run through its channel again with
the current configuration, mappings and code tables, and keeps its id: ``messages
show`` lists each attempt (engine.channel.replay). Its failed outbox deliveries,
if any, go back in the queue with their attempts reset. Each id is one
transaction, audited as ``message.replay`` with the OS account running the command.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

from sqlalchemy import Connection, select

from engine.audit import current_actor
from engine.channel.persist import Persister
from engine.channel.prepare import Preparer
from engine.channel.replay import Replayed, replay_message
from engine.channel.runner import ChannelRunner
from engine.config import Config
from engine.handlers import create_handler
from engine.plan import Plan, build_plan
from engine.store.database import Database
from engine.store.schema import messages

__all__ = ["replay_messages"]


class _Runners:
    """Each channel's runner built from the current configuration, once (the plan compiles every mapping)."""

    def __init__(self, config: Config, db: Database) -> None:
        self.config = config
        self.db = db
        self._plan: Plan | None = None
        self._built: dict[str, ChannelRunner | None] = {}

    def __call__(self, channel_name: str) -> ChannelRunner | None:
        if channel_name not in self._built:
            self._built[channel_name] = self._build(channel_name)
        return self._built[channel_name]

    def _build(self, channel_name: str) -> ChannelRunner | None:
        channel = next((c for c in self.config.channels if c.name == channel_name), None)
        if channel is None:
            return None
        plan = self._plan = self._plan or build_plan(self.config)
        handlers = plan.handlers.get(channel.name) or [create_handler(h, self.config.engine, channel)
                                                       for h in channel.handlers]
        ident = self.config.engine.identity
        persister = Persister(channel, handlers, ident.application, ident.facility)
        return ChannelRunner(channel, Preparer(channel, plan.mappings.get(channel.name)), persister, self.db)


def _channel(conn: Connection, message_id: int) -> str | None:
    return conn.execute(select(messages.c.channel).where(messages.c.id == message_id)).scalar()


def describe(done: Replayed) -> str:
    """One line of output for one replayed id (ids and statuses only: no message content)."""
    requeued = f"{done.requeued} delivery(ies) re-queued"
    if done.refused:
        return f"{done.message_id}: not reprocessed: {done.refused}; {requeued}"
    if not done.attempt:
        return f"{done.message_id}: {done.before}, not reprocessed (only ERROR and REJECTED are); {requeued}"
    return (f"{done.message_id}: reprocessed: {done.ack_code}, {done.before} -> {done.after}"
            f" (attempt {done.attempt}); {requeued}")


def replay_messages(config: Config, db: Database, ids: list[int]) -> int:
    """Replay each id; return 1 if any id was unknown, refused or its reprocessing not accepted."""
    runners = _Runners(config, db)
    actor = current_actor()
    failures = 0
    for message_id in ids:
        channel = db.read(partial(_channel, message_id=message_id))
        if channel is not None:
            runners(channel)  # built (mappings compiled) before the transaction, not while it holds the lock
        done = db.writer.call(partial(replay_message, message_id=message_id, runner_of=runners, actor=actor,
                                      now=datetime.now(UTC)))
        if done is None:
            print(f"{message_id}: no such message")
            failures += 1
            continue
        print(describe(done))
        failures += not done.accepted
    return 1 if failures else 0
