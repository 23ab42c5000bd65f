"""Audit trail of Modality Worklist queries: every answered C-FIND discloses PHI.

One ``audit_events`` row per answered query, committed before the first pending
response leaves (the FHIR API's rule: never an unaudited disclosure):

* ``actor``: the calling AE title (what the modality says it is; the peer address
  in ``detail`` says where it really came from);
* ``action`` ``worklist.query``, ``object_type`` ``worklist``, ``object_id`` the
  calling AE title, so one station's queries are found by the index;
* ``detail``: ``calling_ae``, ``called_ae``, ``remote`` (host:port), ``items``
  (the entries about to be sent; a C-CANCEL may stop them earlier), ``steps``
  (their Scheduled Procedure Step IDs) and ``accession_numbers``, ``keys`` (the
  names of the matching keys that had a value, never the values), plus the
  engine process's host and pid.

A query that matches nothing is recorded too (``items`` 0): who asked is itself
worth knowing. A refused query (C000, A900) discloses nothing and is not recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Connection

from engine.audit import Actor, record
from engine.store.database import Database

__all__ = ["Caller", "WorklistAuditor"]

log = logging.getLogger(__name__)

ACTION = "worklist.query"
SPS_SEQUENCE = "ScheduledProcedureStepSequence"


@dataclass(frozen=True, slots=True)
class Caller:
    """The peer of one association: its calling AE title and address."""

    ae_title: str
    host: str = ""
    port: int = 0

    @property
    def remote(self) -> str:
        return f"{self.host}:{self.port}" if self.host else ""


def matching_keys(identifier: Dataset) -> list[str]:
    """Keywords of the keys with a value (the matching keys), top level and in the SPS item; no values."""
    keys = [e.keyword for e in identifier if e.VR != "SQ" and not e.is_empty]
    sps = identifier.get(SPS_SEQUENCE)
    if sps:
        keys += [f"{SPS_SEQUENCE}.{e.keyword}" for e in sps[0] if e.VR != "SQ" and not e.is_empty]
    return keys


def _column(columns: Sequence[str], name: str) -> int | None:
    return columns.index(name) if name in columns else None


@dataclass(frozen=True, slots=True)
class WorklistAuditor:
    """Writes the audit row of each answered worklist query (blocking; the association's thread)."""

    db: Database
    engine: Actor  # the engine process (host, pid); ``user`` becomes the calling AE title
    called_ae: str

    def record(self, caller: Caller, identifier: Dataset, columns: Sequence[str], rows: Sequence[Any]) -> None:
        """Commit the row for ``rows`` (the entries about to be sent); raises if it cannot be written."""
        sps_at, acc_at = _column(columns, "ScheduledProcedureStepID"), _column(columns, "AccessionNumber")
        detail = {
            "calling_ae": caller.ae_title, "called_ae": self.called_ae, "remote": caller.remote,
            "items": len(rows), "keys": matching_keys(identifier),
            "steps": [str(r[sps_at] or "") for r in rows] if sps_at is not None else [],
            "accession_numbers": [str(r[acc_at] or "") for r in rows] if acc_at is not None else [],
        }  # fmt: skip
        actor = replace(self.engine, user=caller.ae_title or "(no calling AE title)")

        def write(conn: Connection) -> None:
            record(conn, ACTION, "worklist", caller.ae_title, detail, actor)

        # In this thread when the writer is idle (no hand-over to its thread and back), else
        # through its group commit, which shares one commit among concurrent queries.
        done, outcome = self.db.writer.run_inline(write)
        if not done:
            self.db.writer.call(write)
        elif isinstance(outcome, BaseException):
            raise outcome
