"""``radbridge db status|upgrade``: the schema revision of the database, and the one explicit upgrade.

Every other command except ``radbridge run`` (which upgrades when it starts) only reads the
revision and refuses to work on a schema that is not this code's (engine.store.migrate).
``db upgrade`` refuses while an engine runs on this data directory: an engine of this
version would have upgraded already, so the running one is older and must not find its
tables changed under it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import Config
from engine.pidfile import running_pid
from engine.store.migrate import SchemaState, schema_state

if TYPE_CHECKING:
    from engine.store.database import Database

__all__ = ["add_subcommands", "state_text"]

Opener = Callable[[argparse.Namespace], Any]


def state_text(state: SchemaState) -> str:
    """One line: where the schema is and whether it is the one this code needs."""
    if state.up_to_date:
        return f"database at revision {state.current}: up to date"
    if state.current is None:
        return f"database has no radbridge schema yet; this radbridge needs {state.head}"
    if not state.known:
        return f"database at revision {state.current}, unknown to this radbridge (it needs {state.head})"
    return f"database at revision {state.current}, this radbridge needs {state.head}: run `radbridge db upgrade`"


def cmd_status(args: argparse.Namespace, db: Database) -> int:
    """Print the revision; exit 1 unless it is this code's."""
    try:
        state = db.read(schema_state)
    finally:
        db.close()
    if args.json:
        print(json.dumps({"current": state.current, "needed": state.head, "up_to_date": state.up_to_date}))
    else:
        print(state_text(state))
    return 0 if state.up_to_date else 1


def cmd_upgrade(args: argparse.Namespace, db: Database, config: Config) -> int:
    """Migrate to this code's revision, unless an engine is running on this data directory."""
    try:
        before = db.read(schema_state)
        if before.up_to_date:
            print(state_text(before))
            return 0
        if not before.known:
            print(f"radbridge db upgrade: {state_text(before)}: a newer radbridge upgraded it; use that version",
                  file=sys.stderr)
            return 1
        pid = running_pid(Path(config.engine.data_dir) / "radbridge.pid")
        if pid is not None:
            print(f"radbridge db upgrade: an engine (pid {pid}) is running on this data directory; stop it first"
                  " (`radbridge run` of this version upgrades when it starts)", file=sys.stderr)
            return 1
        db.migrate()
        after = db.read(schema_state)
    finally:
        db.close()
    print(f"database upgraded from revision {before.current or '(none)'} to {after.current}")
    return 0


def add_subcommands(sub: Any, raw_database: Opener, config: Callable[[argparse.Namespace], Config]) -> None:
    """Register ``db status|upgrade``; ``raw_database(args)`` opens the database without checking its schema."""
    group = sub.add_parser("db", help="the database schema: its revision, the explicit upgrade").add_subparsers(
        dest="db_command", required=True, metavar="ACTION")
    status = group.add_parser("status", help="the schema revision and the one this radbridge needs (exit 1 if not)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(fn=lambda args: cmd_status(args, raw_database(args)))
    upgrade = group.add_parser("upgrade", help="upgrade the schema to this radbridge's revision (engine stopped)")
    upgrade.set_defaults(fn=lambda args: cmd_upgrade(args, raw_database(args), config(args)), creates_store=True)
