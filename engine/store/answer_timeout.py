"""A bound on how long a PostgreSQL request may go unanswered: a server that accepts but never answers.

libpq's TCP keepalives and ``tcp_user_timeout`` (engine.store.database.TCP_DEFAULTS) end a connection whose
peer vanished from the network. A server that is there but does not answer is another failure: a
postmaster and its backends stopped (``SIGSTOP``, a debugger, a VM paused by its hypervisor with its
network still answered by a proxy), a backend stuck in the kernel on a dead disk. Its kernel acknowledges
the data and the keepalive probes, so nothing at the TCP level ever ends the wait: every order and image
behind the statement waited for ever.

psycopg runs every blocking request of a connection (a statement, a fetch, a commit or rollback) through
:meth:`psycopg.Connection.wait`. :class:`BoundedConnection` gives each of those waits a deadline; a
request unanswered by it closes the connection (its state is unknown: it is never used again) and raises
:class:`psycopg.OperationalError`, which SQLAlchemy takes for a lost connection. The work fails as it does
when the server is down (AE, 0xA700, a retry later) and the next request gets a new connection.

Schema migrations at start are not bounded (:func:`unbounded`): creating an index on a large table may
legitimately take longer than any answer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import errors

__all__ = ["DEFAULT_ANSWER_TIMEOUT_SECONDS", "BoundedConnection", "unbounded"]

#: Seconds a request to PostgreSQL may go unanswered unless configured (``database.answer_timeout_seconds``).
DEFAULT_ANSWER_TIMEOUT_SECONDS = 60.0

_local = threading.local()


@contextlib.contextmanager
def unbounded() -> Iterator[None]:
    """Requests made by this thread inside the block wait for their answer as long as it takes."""
    before = getattr(_local, "unbounded", False)
    _local.unbounded = True
    try:
        yield
    finally:
        _local.unbounded = before


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose requests each wait at most :attr:`answer_timeout` seconds."""

    answer_timeout: float = DEFAULT_ANSWER_TIMEOUT_SECONDS

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        """psycopg's wait, with a deadline unless the caller gave one or the thread is :func:`unbounded`."""
        if len(args) >= 2 or kwargs.get("timeout") is not None or getattr(_local, "unbounded", False):
            return super().wait(gen, *args, **kwargs)  # psycopg's own deadline (notifies), or none wanted
        kwargs["timeout"] = self.answer_timeout
        try:
            return super().wait(gen, *args, **kwargs)
        except errors._WaitTimeout as exc:  # our deadline passed
            self.pgconn.finish()  # a request in flight, an answer perhaps coming: never reuse the connection
            raise psycopg.OperationalError(
                f"the database server did not answer within {self.answer_timeout:g} s: connection closed") from exc


def bounded_class(seconds: float) -> type[BoundedConnection]:
    """A :class:`BoundedConnection` subclass waiting ``seconds`` (one class per distinct bound)."""
    if seconds == BoundedConnection.answer_timeout:
        return BoundedConnection
    return _classes.setdefault(seconds, type("BoundedConnection", (BoundedConnection,), {"answer_timeout": seconds}))


_classes: dict[float, type[BoundedConnection]] = {}
