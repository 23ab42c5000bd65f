"""Audit trail of PHI access: every read of message content through the CLI or an API."""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime

from sqlalchemy import Connection, insert

from engine.store.schema import audit_events

__all__ = ["current_actor", "record"]


def current_actor() -> str:
    """Who is acting: RADBRIDGE_ACTOR, else the OS user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return os.environ.get("RADBRIDGE_ACTOR", user)


def record(conn: Connection, action: str, object_type: str, object_id: str, detail: str = "",
           actor: str | None = None) -> None:
    """Append one audit event in the caller's transaction."""
    conn.execute(insert(audit_events).values(
        at=datetime.now(UTC), actor=(actor or current_actor())[:128], action=action[:64],
        object_type=object_type[:32], object_id=object_id[:128], detail=detail,
    ))
