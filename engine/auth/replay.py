"""Assertion replay: each ``jti`` of a client is accepted once, durably (RFC 7523 3, item 7).

The ``jti`` is kept in ``auth_used_jtis`` until its assertion expires (plus the clock
leeway, while it could still verify); a later assertion with the same ``jti`` from
the same client finds the row and is refused, by this engine or any other on the
same database. Expired rows are deleted by the same transaction that adds one, so
the table holds only the assertions of the last few minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, delete
from sqlalchemy.dialects import postgresql, sqlite

from engine.auth.tables import auth_used_jtis

__all__ = ["keep_until", "use_jti"]


def use_jti(conn: Connection, client_id: str, jti: str, expires_at: datetime, now: datetime | None = None) -> bool:
    """Record ``jti`` as used until ``expires_at``; False if it was used before (a replay)."""
    now = now or datetime.now(UTC)
    conn.execute(delete(auth_used_jtis).where(auth_used_jtis.c.expires_at < now))
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    added = conn.execute(insert(auth_used_jtis).values(client_id=client_id, jti=jti, expires_at=expires_at)
                         .on_conflict_do_nothing(index_elements=["client_id", "jti"])
                         .returning(auth_used_jtis.c.jti)).first()
    return added is not None


def keep_until(exp: int, leeway: float) -> datetime:
    """How long to remember a ``jti`` whose assertion expires at ``exp`` (epoch seconds)."""
    return datetime.fromtimestamp(exp, UTC) + timedelta(seconds=leeway)
