"""Who may call, and the audit trail of what they read: the door every PHI request passes.

``admit`` authenticates the ``Authorization`` header and requires the interaction
on the type (engine.auth's contract) before the handler touches any data; an
``AuthFailure`` becomes its status with an OperationOutcome and an RFC 6750
``WWW-Authenticate`` header. ``audit`` commits one ``audit_events`` row per read or
search (who: the client id; what: the resource ids served; when; from where: the
peer address) before the response leaves: a failed audit is a 503, never an
unaudited disclosure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from sqlalchemy import Connection
from starlette.requests import Request

from channels.fhir.outcome import ApiError
from engine.audit import Actor, record
from engine.auth import AuthFailure, Authorizer, Interaction, Principal
from engine.store.database import Database

__all__ = ["Gate"]

_OUTCOME_CODES = {401: "login", 403: "forbidden"}
T = TypeVar("T")


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


@dataclass(frozen=True, slots=True)
class Gate:
    """Authorization and audit for one API instance."""

    authorizer: Authorizer
    db: Database
    actor: Actor  # the engine process (host, pid); ``user`` becomes the client id

    def check(self, authorization: str | None, wanted: Sequence[tuple[str, Interaction]]) -> Principal:
        """The caller, allowed every (type, interaction) of ``wanted``; ApiError 401/403 otherwise (blocking)."""
        try:
            principal = self.authorizer.authenticate(authorization)
            for res_type, interaction in wanted:
                self.authorizer.require(principal, res_type, interaction)
        except AuthFailure as exc:
            challenge = (f'Bearer realm="radbridge", error="{_quoted(exc.error)}", '
                         f'error_description="{_quoted(exc.description)}"')
            raise ApiError(exc.status, _OUTCOME_CODES.get(exc.status, "security"), exc.description,
                           {"WWW-Authenticate": challenge}) from exc
        return principal

    async def admit(self, request: Request, wanted: Sequence[tuple[str, Interaction]]) -> Principal:
        """:meth:`check` off the event loop (an authorizer may look a token up)."""
        return await asyncio.to_thread(self.check, request.headers.get("authorization"), wanted)

    async def then_read(self, request: Request, wanted: Sequence[tuple[str, Interaction]],
                        fn: Callable[[Connection], T]) -> tuple[Principal, T]:
        """:meth:`check`, then (only if it passed) ``fn`` in a read transaction, in one worker thread."""
        authorization = request.headers.get("authorization")

        def work() -> tuple[Principal, T]:
            principal = self.check(authorization, wanted)
            return principal, self.db.read(fn)

        return await asyncio.get_running_loop().run_in_executor(None, work)

    async def audit(self, principal: Principal, request: Request, action: str, res_type: str, object_id: str,
                    served: list[str], query: str = "") -> None:
        """Commit the audit row of one disclosure (blocking the response until durable)."""
        peer = request.client
        detail = {"client_id": principal.client_id, "token_id": principal.token_id,
                  "remote": f"{peer.host}:{peer.port}" if peer else "", "resources": served, "query": query}
        actor = replace(self.actor, user=principal.client_id)
        await self.db.writer.run(lambda c: record(c, action, res_type, object_id, detail, actor))
