"""Modality Worklist C-FIND SCP (PS3.4 K; SOP class 1.2.840.10008.5.1.4.31).

A thin shell: the matcher (:mod:`engine.domain.worklist`) builds the SQL and
the responses; this module runs the query on a reader connection and either yields
pending responses to pynetdicom (:meth:`WorklistService.find`) or hands them, encoded,
in batches to a :class:`ResponseSink` (:meth:`WorklistService.find_encoded`), checking
C-CANCEL between them (PS3.4 K.4.1.3.1). Every answered query is audited before its
first response (:mod:`channels.dicom.mwl_audit`); when that fails it is answered C000.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import encode

from engine.audit import current_actor
from engine.config.models import WorklistConfig
from engine.domain.identifier_encoding import ResponsePlan, fast_codec
from engine.domain.worklist import (
    InvalidQuery,
    KeySpec,
    MatchSettings,
    build_response,
    build_select,
    requested_keys,
    response_charset,
    unsupported_keys,
)
from engine.store.database import Database, unavailable

from .identifier_check import structure_problem
from .mwl_audit import Caller, WorklistAuditor

__all__ = [
    "CANCEL",
    "IDENTIFIER_DOES_NOT_MATCH",
    "OUT_OF_RESOURCES",
    "PENDING",
    "PENDING_UNSUPPORTED",
    "UNABLE_TO_PROCESS",
    "ResponseSink",
    "WorklistService",
    "identifier_refusal",
]

log = logging.getLogger(__name__)

PENDING = 0xFF00
PENDING_UNSUPPORTED = 0xFF01
CANCEL = 0xFE00
OUT_OF_RESOURCES = 0xA700
UNABLE_TO_PROCESS = 0xC000
IDENTIFIER_DOES_NOT_MATCH = 0xA900

FindResult = Iterator[tuple[int, Dataset | None]]

#: The caller of a query made without an association (tests, benchmarks).
UNKNOWN_CALLER = Caller("")

#: Pending responses handed to a :class:`ResponseSink` at a time (C-CANCEL is checked between batches).
BATCH = 32


class ResponseSink(Protocol):
    """Where :meth:`WorklistService.find_encoded` sends pending responses."""

    #: Identifiers are encoded Implicit VR (else Explicit VR) Little Endian.
    implicit_vr: bool

    def send(self, responses: Sequence[tuple[int, bytes]]) -> bool:
        """Send (status, encoded identifier) pairs in order; False if nothing more may be sent."""
        ...

    def cancelled(self) -> bool:
        """True once the peer has cancelled the C-FIND."""
        ...


#: Responses queued for sending before the next one is built. Without this limit the
#: generator outruns the network, every response is queued at once, and a C-CANCEL
#: (PS3.4 C.4.1.3.2) arrives after there is nothing left to cancel.
MAX_QUEUED_RESPONSES = 16


def _wait_for_room(backlog: Callable[[], int], is_cancelled: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while backlog() > MAX_QUEUED_RESPONSES and not is_cancelled() and time.monotonic() < deadline:
        time.sleep(0.0005)


def _latched(is_cancelled: Callable[[], bool]) -> Callable[[], bool]:
    """``is_cancelled`` that stays true once it has been true.

    pynetdicom's ``Event.is_cancelled`` consumes the C-CANCEL it reports (the request is
    removed from the association's pending cancels), so a second look returns False. Both
    the wait for room and the check before each response look; without the latch a cancel
    seen while waiting for room was lost and every remaining match was sent.
    """
    seen = False

    def cancelled() -> bool:
        nonlocal seen
        seen = seen or bool(is_cancelled())
        return seen

    return cancelled


@dataclass(frozen=True, slots=True)
class WorklistService:
    """Answers worklist C-FINDs from the database."""

    db: Database
    settings: MatchSettings
    charset: str
    auditor: WorklistAuditor

    @classmethod
    def from_config(cls, db: Database, cfg: WorklistConfig, called_ae: str = "") -> WorklistService:
        """Build from the ``worklist:`` settings; ``called_ae`` (our AE title) goes into each audit row."""
        settings = MatchSettings(
            case_sensitive_names=cfg.person_name_case_sensitive,
            hidden_statuses=tuple(cfg.hidden_statuses),
            max_matches=cfg.max_matches,
            dialect="sqlite" if db.is_sqlite else "postgresql",
        )
        return cls(db, settings, cfg.charset, WorklistAuditor(db, current_actor(), called_ae))

    def _matches(
        self, identifier: Dataset, caller: Caller
    ) -> tuple[tuple[KeySpec, ...], list[str], list[Any], int] | None:
        """Run and audit the query: (requested keys, columns, rows, pending status), or None if it is refused."""
        try:
            stmt = build_select(identifier, self.settings)
            keys = requested_keys(identifier)
        except InvalidQuery as exc:  # its text names the attribute, never the value
            log.info("worklist query refused: %s", exc)
            return None
        except (ValueError, KeyError) as exc:  # pydicom's text may quote a patient's value
            log.info("worklist query refused: %s", type(exc).__name__)
            log.debug("worklist query refused: %s", exc)
            return None
        try:
            columns, rows = self.db.read(lambda conn: _fetch(conn.execute(stmt)))
        except Exception as exc:
            if not unavailable(exc):
                raise
            log.error("worklist query from %s refused: the store is unavailable (%s)", caller.ae_title,
                      type(exc).__name__)
            return None
        try:
            self.auditor.record(caller, identifier, columns, rows[: self.settings.max_matches])
        except Exception as exc:  # nothing is disclosed that the audit trail does not show
            log.error("worklist query from %s refused: its audit event could not be written (%s)",
                      caller.ae_title, type(exc).__name__)
            return None
        return keys, columns, rows, PENDING_UNSUPPORTED if unsupported_keys(keys) else PENDING

    def find(
        self,
        identifier: Dataset,
        is_cancelled: Callable[[], bool],
        transfer_syntax: str | None = None,
        backlog: Callable[[], int] | None = None,
        caller: Caller = UNKNOWN_CALLER,
    ) -> FindResult:
        """Yield (status, identifier) pairs as pynetdicom's EVT_C_FIND handler expects.

        With the negotiated ``transfer_syntax`` the identifiers are encoded from the
        rows directly (:mod:`engine.domain.identifier_encoding`) where it allows.
        """
        matches = self._matches(identifier, caller)
        if matches is None:
            yield UNABLE_TO_PROCESS, None
            return
        keys, columns, rows, pending = matches
        is_cancelled = _latched(is_cancelled)
        respond = self._responder(keys, columns, transfer_syntax)
        for n, row in enumerate(rows):
            if n >= self.settings.max_matches:
                log.warning(
                    "worklist query matched more than %d entries", self.settings.max_matches
                )
                yield OUT_OF_RESOURCES, None
                return
            if backlog is not None:
                _wait_for_room(backlog, is_cancelled)
            if is_cancelled():
                yield CANCEL, None
                return
            yield pending, respond(row)

    def find_encoded(self, identifier: Dataset, sink: ResponseSink, caller: Caller = UNKNOWN_CALLER) -> FindResult:
        """Send the pending responses to ``sink`` in batches; yield only a final non-success status.

        Success is what pynetdicom sends when the generator ends without yielding.
        """
        matches = self._matches(identifier, caller)
        if matches is None:
            yield UNABLE_TO_PROCESS, None
            return
        keys, columns, rows, pending = matches
        encoded = self._encoder(keys, columns, sink.implicit_vr)
        limit = self.settings.max_matches
        for start in range(0, min(len(rows), limit), BATCH):
            batch = [(pending, encoded(row)) for row in rows[start : min(start + BATCH, limit)]]
            if not sink.send(batch):
                if sink.cancelled():
                    yield CANCEL, None
                return
        if len(rows) > limit:
            log.warning("worklist query matched more than %d entries", limit)
            yield OUT_OF_RESOURCES, None

    def _encoder(
        self, keys: tuple[KeySpec, ...], columns: list[str], implicit_vr: bool
    ) -> Callable[[Sequence[Any]], bytes]:
        """Row → encoded response identifier (Little Endian): the plan's bytes where it applies."""
        plan = ResponsePlan.compile(keys, columns, implicit_vr)

        def encoded(row: Sequence[Any]) -> bytes:
            charset = response_charset(row, self.charset)
            codec = fast_codec(charset)
            if codec is None:
                ds = build_response(dict(zip(columns, row, strict=True)), keys, charset)
                data = encode(ds, implicit_vr, True)
                if data is None:  # pynetdicom's handler wrapper answers 0xC311
                    raise ValueError("response identifier could not be encoded")
                return data
            return plan.encode_bytes(row, charset, codec)

        return encoded

    def _responder(
        self, keys: tuple[KeySpec, ...], columns: list[str], transfer_syntax: str | None
    ) -> Callable[[Sequence[Any]], Dataset]:
        """Row → response identifier: the raw-encoding plan where it applies, else a Dataset."""
        syntax = UID(transfer_syntax) if transfer_syntax else None
        if syntax is not None and syntax.is_little_endian:
            plan = ResponsePlan.compile(keys, columns, syntax.is_implicit_VR)

            def encoded(row: Sequence[Any]) -> Dataset:
                charset = response_charset(row, self.charset)
                codec = fast_codec(charset)
                if codec is None:
                    return build_response(dict(zip(columns, row, strict=True)), keys, charset)
                return plan.encode(row, charset, codec)

            return encoded

        def built(row: Sequence[Any]) -> Dataset:
            mapping = dict(zip(columns, row, strict=True))
            return build_response(mapping, keys, response_charset(row, self.charset))

        return built


def identifier_refusal(identifier: Any, transfer_syntax: str) -> int | None:
    """0xA900 if the request's encoded identifier is not a well-formed data set, else None.

    PS3.4 K.4.1.1.4 (Table K.4-2): "Identifier does not match SOP Class". Checked on the
    bytes (:mod:`channels.dicom.identifier_check`) before pydicom reads them, which it
    would do forgivingly. Big Endian (retired) identifiers are left to pydicom.
    """
    syntax = UID(transfer_syntax)
    data = identifier.getvalue() if identifier is not None else b""
    if not syntax.is_little_endian or syntax.is_deflated:
        return None
    problem = structure_problem(data, bool(syntax.is_implicit_VR)) if data else "no identifier"
    if problem is None:
        return None
    log.info("worklist query refused: the identifier is not a data set (%s)", problem)
    return IDENTIFIER_DOES_NOT_MATCH


def _fetch(result: Any) -> tuple[list[str], list[Any]]:
    return list(result.keys()), result.all()
