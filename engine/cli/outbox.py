"""``radbridge outbox list|replay``: outbound deliveries, whatever their source, and dead letters.

``messages replay`` re-queues the deliveries of stored HL7 messages; deliveries
that no message owns (stored images forwarded to a DICOM destination) are
replayed here, by row id or for a whole destination. A running engine picks
the re-queued rows up at its next poll. Both commands are audited: a
delivery's last error may quote the receiver's answer, which can name a patient.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select, update

from engine.audit import record
from engine.outbox.queue import QUEUED
from engine.outbox.rows import ERROR
from engine.store.schema import outbox

if TYPE_CHECKING:
    from engine.store.database import Database

__all__ = ["add_subcommands", "list_deliveries", "replay_deliveries"]

_COLUMNS = (outbox.c.id, outbox.c.destination, outbox.c.channel, outbox.c.ordering_key, outbox.c.status,
            outbox.c.attempts, outbox.c.created_at, outbox.c.sent_at, outbox.c.media_type, outbox.c.last_error,
            outbox.c.response)


def list_deliveries(conn: Connection, destination: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
    """Newest first, with an ``outbox.list`` audit event in the same transaction."""
    query = select(*_COLUMNS).order_by(outbox.c.id.desc()).limit(limit)
    if destination is not None:
        query = query.where(outbox.c.destination == destination)
    if status is not None:
        query = query.where(outbox.c.status == status)
    rows = [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r._mapping.items()}
            for r in conn.execute(query)]
    record(conn, action="outbox.list", object_type="destination", object_id=destination or "*")
    return rows


def replay_deliveries(conn: Connection, ids: list[int], destination: str | None, now: datetime) -> int:
    """Put ERROR rows (these ids, or every one of ``destination``) back in the queue; how many."""
    conditions = [outbox.c.status == ERROR]
    if ids:
        conditions.append(outbox.c.id.in_(ids))
    if destination is not None:
        conditions.append(outbox.c.destination == destination)
    result = conn.execute(update(outbox).where(*conditions).values(
        status=QUEUED, attempts=0, next_attempt_at=now, claimed_until=None, last_error=""))
    record(conn, action="outbox.replay", object_type="destination", object_id=destination or "*")
    return int(result.rowcount or 0)


def _cmd_list(args: argparse.Namespace, db: Database) -> int:
    rows = db.writer.call(partial(list_deliveries, destination=args.destination, status=args.status,
                                  limit=args.limit))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    cols = ["id", "destination", "status", "attempts", "ordering_key", "created_at", "last_error"]
    print("\t".join(cols))
    for row in rows:
        print("\t".join(str(row[c] or "").replace("\t", " ").replace("\n", " ") for c in cols))
    return 0


def not_replayable(conn: Connection, ids: list[int], destination: str | None) -> list[str]:
    """Why each of ``ids`` would not be re-queued: unknown, not a dead letter, or another destination's."""
    found = {row.id: row for row in conn.execute(
        select(outbox.c.id, outbox.c.status, outbox.c.destination).where(outbox.c.id.in_(ids)))}
    reasons = []
    for row_id in dict.fromkeys(ids):
        row = found.get(row_id)
        if row is None:
            reasons.append(f"{row_id}: no such delivery")
        elif row.status != ERROR:
            reasons.append(f"{row_id}: not a dead letter ({row.status}); only ERROR rows are put back in the queue")
        elif destination is not None and row.destination != destination:
            reasons.append(f"{row_id}: a delivery to {row.destination}, not {destination}")
    return reasons


def replayable_destinations(conn: Connection, ids: list[int], destination: str | None) -> list[str]:
    """The destinations of the dead letters :func:`replay_deliveries` would put back in the queue."""
    conditions = [outbox.c.status == ERROR]
    if ids:
        conditions.append(outbox.c.id.in_(ids))
    if destination is not None:
        conditions.append(outbox.c.destination == destination)
    return sorted(set(conn.execute(select(outbox.c.destination).where(*conditions).distinct()).scalars()))


def _targets(args: argparse.Namespace) -> dict[str, str]:
    """Every destination → where it sends ("off": no address), as the running engine (else the configuration) says."""
    from pathlib import Path

    from engine.cli.status_view import configured
    from engine.config import load_config

    return dict(configured(load_config(Path(args.config)))["destination_targets"])


def _cmd_replay(args: argparse.Namespace, db: Database) -> int:
    if not args.ids and args.destination is None:
        print("radbridge outbox replay: name the row ids (radbridge outbox list --status ERROR) or --destination NAME",
              file=sys.stderr)
        return 2
    reasons = db.read(partial(not_replayable, ids=args.ids, destination=args.destination)) if args.ids else []
    names = db.read(partial(replayable_destinations, ids=args.ids, destination=args.destination))
    count = db.writer.call(partial(replay_deliveries, ids=args.ids, destination=args.destination,
                                   now=datetime.now(UTC)))
    for reason in reasons:
        print(reason, file=sys.stderr)
    # A destination without an address (RADBRIDGE_PACS_HOST unset where the engine runs) never takes its rows:
    # "1 delivery(ies) re-queued" alone left them QUEUED for good, status counting them as a backlog.
    targets = _targets(args) if count else {}
    for name in names:
        if targets.get(name) == "off":
            print(f"{name}: this destination is off (no address in the engine's configuration): its re-queued"
                  " rows wait until it is given one and the engine restarted", file=sys.stderr)
    print(f"{count} delivery(ies) re-queued")
    return 0 if count else 1


def add_subcommands(sub: Any, database: Any) -> None:
    """Register ``outbox list|replay``; ``database(args)`` opens the configured database."""
    cmd = sub.add_parser("outbox", help="outbound deliveries and dead letters (audited)").add_subparsers(
        dest="outbox_command", required=True)
    lst = cmd.add_parser("list", help="deliveries, newest first (audited)")
    lst.add_argument("--destination", help="only this destination")
    lst.add_argument("--status", choices=["QUEUED", "SENT", "ERROR"], help="only this status (ERROR: dead letters)")
    lst.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(fn=lambda args: _cmd_list(args, database(args)))
    replay = cmd.add_parser("replay", help="put dead letters (ERROR) back in the queue (audited)")
    replay.add_argument("ids", type=int, nargs="*", metavar="ID", help="outbox row ids, as listed")
    replay.add_argument("--destination", help="every dead letter of this destination (with ids: only those)")
    replay.set_defaults(fn=lambda args: _cmd_replay(args, database(args)))
