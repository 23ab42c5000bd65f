"""The audit trail names the real actor (the effective uid's account) and where the access came from."""

from __future__ import annotations

import json
import os
import pwd
import socket

import pytest
from sqlalchemy import select

from engine.audit import Actor, current_actor, record
from engine.store.database import Database
from engine.store.schema import audit_events


def test_the_actor_is_the_effective_uid_whatever_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RADBRIDGE_ACTOR", "USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "mallory")

    actor = current_actor()

    assert actor.user == pwd.getpwuid(os.geteuid()).pw_name != "mallory"
    assert (actor.uid, actor.pid, actor.host) == (os.geteuid(), os.getpid(), socket.gethostname())


def test_an_event_records_actor_where_and_what(db: Database) -> None:
    actor = Actor("alice", 1001, "ws-7", 4242, "/dev/pts/3", "alice")

    db.writer.call(lambda c: record(c, "message.list", "patient", "PHIID98765",
                                    {"query": {"patient_id": "PHIID98765"}, "message_ids": [3, 1]}, actor))

    row = db.read(lambda c: c.execute(select(audit_events)).one())
    assert (row.actor, row.action, row.object_type, row.object_id) == ("alice", "message.list", "patient",
                                                                       "PHIID98765")
    assert json.loads(row.detail) == {"host": "ws-7", "pid": 4242, "tty": "/dev/pts/3", "uid": 1001,
                                      "login_user": "alice", "query": {"patient_id": "PHIID98765"},
                                      "message_ids": [3, 1]}
