"""Audit trail of PHI access: every read of message content through the CLI or an API.

Each event names the real actor and where the access came from:

* ``actor`` is the account of the process's *effective* uid, looked up in the
  password database (``pwd``), not ``$USER``/``$LOGNAME`` or any other variable
  the caller can set; an API passes its authenticated user instead
  (:class:`Actor` with ``user`` set to it).
* ``detail`` is a JSON object: ``host``, ``pid``, ``tty`` (or null), ``uid``,
  ``login_user`` (the kernel's login uid, ``/proc/self/loginuid``, where there
  is one: who logged in before any ``su``/``sudo``), and what was accessed
  (e.g. ``query`` and ``message_ids`` for a listing).
* ``object_type``/``object_id`` index the access: ``message``/id for one
  message, ``patient``/id or ``accession``/number for a listing filtered by
  them, ``query``/"" for any other listing.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert

from engine.store.schema import audit_events

__all__ = ["Actor", "current_actor", "event_row", "record"]

#: Built once: one statement for a row or for a group of rows (executemany).
INSERT_EVENT = insert(audit_events)

#: ``/proc/self/loginuid`` of a process that no login session started (daemons, containers).
_NO_LOGIN_UID = 4294967295


@dataclass(frozen=True)
class Actor:
    """Who accessed PHI, from which host, process and terminal."""

    user: str
    uid: int
    host: str
    pid: int
    tty: str | None
    login_user: str | None

    def where(self) -> dict[str, Any]:
        """The JSON fields an event records besides ``actor``."""
        return {"host": self.host, "pid": self.pid, "tty": self.tty, "uid": self.uid,
                "login_user": self.login_user}


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (e.g. an arbitrary uid in a container)
        return f"uid:{uid}"


def _tty() -> str | None:
    for fd in (0, 1, 2):
        try:
            return os.ttyname(fd)
        except OSError:
            continue
    return None


def _login_user(loginuid: Path = Path("/proc/self/loginuid")) -> str | None:
    try:
        uid = int(loginuid.read_text().strip())
    except (OSError, ValueError):
        return None
    return None if uid == _NO_LOGIN_UID else _user_name(uid)


def current_actor() -> Actor:
    """The OS account of this process's effective uid, with host, pid, tty and login user."""
    uid = os.geteuid()
    return Actor(_user_name(uid), uid, socket.gethostname(), os.getpid(), _tty(), _login_user())


def event_row(action: str, object_type: str, object_id: str, accessed: Mapping[str, Any] | None = None,
              actor: Actor | None = None) -> dict[str, Any]:
    """The ``audit_events`` row of one access, stamped now (see :func:`record` for ``accessed``)."""
    who = actor or current_actor()
    detail = {**who.where(), **(accessed or {})}
    return {"at": datetime.now(UTC), "actor": who.user[:128], "action": action[:64],
            "object_type": object_type[:32], "object_id": object_id[:128],
            "detail": json.dumps(detail, default=str, sort_keys=True)}


def record(conn: Connection, action: str, object_type: str, object_id: str,
           accessed: Mapping[str, Any] | None = None, actor: Actor | None = None) -> None:
    """Append one audit event in the caller's transaction.

    ``accessed`` (e.g. the query and the message ids it returned) joins the actor's
    host/pid/tty in the event's JSON ``detail``.
    """
    conn.execute(INSERT_EVENT, [event_row(action, object_type, object_id, accessed, actor)])
