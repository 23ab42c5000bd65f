"""Who may call, and the audit trail of what they read: the door every PHI request passes.

``admit`` authenticates the ``Authorization`` header and requires the interaction
on the type (engine.auth's contract) before the handler touches any data; an
``AuthFailure`` becomes its status with an OperationOutcome and an RFC 6750
``WWW-Authenticate`` header. ``audit`` commits one ``audit_events`` row per read or
search (who: the client id; what: the resource ids served; when; from where: the
peer address) before the response leaves: a failed audit is a 503, never an
unaudited disclosure. The rows of concurrent requests share one transaction
(:class:`engine.audit_commit.LoopAuditCommitter`), and a request waiting for its
commit holds no thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from starlette.requests import Request

from channels.fhir.outcome import ApiError
from engine.audit import Actor, event_row
from engine.audit_commit import LoopAuditCommitter
from engine.auth import AuthFailure, Authorizer, Interaction, Principal
from engine.store.database import Database

__all__ = ["Gate", "peer_of"]

_OUTCOME_CODES = {401: "login", 403: "forbidden"}


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


@dataclass(frozen=True, slots=True)
class Gate:
    """Authorization and audit for one API instance."""

    authorizer: Authorizer
    db: Database
    actor: Actor  # the engine process (host, pid); ``user`` becomes the client id
    committer: LoopAuditCommitter = field(init=False)
    _actors: dict[str, Actor] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "committer", LoopAuditCommitter(self.db.writer))
        object.__setattr__(self, "_actors", {})

    def check(self, authorization: str | None, wanted: Sequence[tuple[str, Interaction]]) -> Principal:
        """The caller, allowed every (type, interaction) of ``wanted``; ApiError 401/403 otherwise (blocking)."""
        try:
            principal = self.authorizer.authenticate(authorization)
            for res_type, interaction in wanted:
                self.authorizer.require(principal, res_type, interaction)
        except AuthFailure as exc:
            challenge = 'Bearer realm="radbridge"'  # no credentials: no error code (RFC 6750 3.1)
            if exc.error:
                challenge += f', error="{_quoted(exc.error)}", error_description="{_quoted(exc.description)}"'

            raise ApiError(exc.status, _OUTCOME_CODES.get(exc.status, "security"), exc.description,
                           {"WWW-Authenticate": challenge}) from exc
        return principal

    def check_any(self, authorization: str | None, choices: Sequence[tuple[str, Interaction]]) -> Principal:
        """The caller, allowed at least one (type, interaction) of ``choices``; ApiError 401, or the 403 of the
        first choice when none is allowed (blocking)."""
        refused: ApiError | None = None
        for choice in choices:
            try:
                return self.check(authorization, [choice])
            except ApiError as exc:
                if exc.status != 403:
                    raise
                refused = refused or exc
        assert refused is not None, "check_any needs at least one choice"
        raise refused

    async def admit(self, request: Request, wanted: Sequence[tuple[str, Interaction]]) -> Principal:
        """:meth:`check` off the event loop (an authorizer may look a token up)."""
        return await asyncio.to_thread(self.check, request.headers.get("authorization"), wanted)

    def _actor(self, client_id: str) -> Actor:
        """The engine process's actor with ``user`` = the client (one per client, built once)."""
        actor = self._actors.get(client_id)
        if actor is None:
            if len(self._actors) >= 1024:
                self._actors.clear()
            actor = self._actors[client_id] = Actor(client_id, self.actor.uid, self.actor.host, self.actor.pid,
                                                    self.actor.tty, self.actor.login_user)
        return actor

    async def audit(self, principal: Principal, peer: str, action: str, res_type: str, object_id: str,
                    served: list[str], query: str = "") -> None:
        """Return once the audit row of one disclosure is committed, before the response leaves.

        The rows of concurrent requests are committed together (group commit through the
        writer); no thread waits meanwhile. A failure raises (StoreUnavailable: 503).
        """
        detail = {"client_id": principal.client_id, "token_id": principal.token_id, "remote": peer,
                  "resources": served, "query": query}
        await self.committer.commit(event_row(action, res_type, object_id, detail, self._actor(principal.client_id)))


def peer_of(request: Request) -> str:
    """``host:port`` of the caller, for the audit trail."""
    return f"{request.client.host}:{request.client.port}" if request.client else ""
