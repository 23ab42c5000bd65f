"""Read-side queries used by the CLI (and later the HTTP API): lists, details, status.

What shows patient data (a listing, one message) is read through
:func:`audited_list` / :func:`audited_detail`, which record the access in the
audit trail (:mod:`engine.audit`) in the same transaction as the read: no
result leaves without its event.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Select, func, select, text

from engine.audit import Actor, record
from engine.channel.replay import attempts
from engine.outbox.queue import QUEUED
from engine.store.schema import UNPROCESSED_SQL, job_runs, messages, outbox

if TYPE_CHECKING:
    from engine.store.database import Database

__all__ = [
    "MessageFilter", "audited_detail", "audited_list", "channel_status", "engine_status", "list_messages",
    "message_detail",
]

#: How far back ``radbridge status`` looks for refused images that need attention (the total is shown too).
RECENT_REFUSALS = timedelta(hours=24)

_LIST_COLUMNS = (
    messages.c.id, messages.c.channel, messages.c.received_at, messages.c.status, messages.c.message_type,
    messages.c.control_id, messages.c.patient_id, messages.c.accession_number, messages.c.ack_code,
    messages.c.error_code, messages.c.error_location, messages.c.duplicate_count, messages.c.acknowledged_at,
)


@dataclass(frozen=True)
class MessageFilter:
    """Criteria for ``messages list``; None means any."""

    channel: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    control_id: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None
    message_type: str | None = None
    limit: int = 100


def _jsonable(row: Any) -> dict[str, Any]:
    out = {}
    for key, value in row._mapping.items():
        out[key] = value.isoformat() if isinstance(value, datetime) else value
    return out


def list_messages(conn: Connection, f: MessageFilter) -> list[dict[str, Any]]:
    """Newest first."""
    return [_jsonable(r) for r in conn.execute(_query(f))]


def audited_list(db: Database, f: MessageFilter, actor: Actor | None = None) -> list[dict[str, Any]]:
    """:func:`list_messages`, recorded as ``message.list`` with the query and the ids it returned.

    Indexed under ``patient``/id or ``accession``/number when the query names one
    (so "who looked up this patient" is one lookup), else ``query``/"".
    """
    return db.writer.call(partial(_list_and_record, f=f, actor=actor))


def _list_and_record(conn: Connection, f: MessageFilter, actor: Actor | None) -> list[dict[str, Any]]:
    rows = list_messages(conn, f)
    object_type, object_id = _audit_key(f)
    terms = {k: v for k, v in asdict(f).items() if v is not None}
    record(conn, "message.list", object_type, object_id,
           {"query": terms, "message_ids": [r["id"] for r in rows]}, actor)
    return rows


def _audit_key(f: MessageFilter) -> tuple[str, str]:
    if f.patient_id is not None:
        return "patient", f.patient_id
    if f.accession_number is not None:
        return "accession", f.accession_number
    return "query", ""


def audited_detail(db: Database, message_id: int, actor: Actor | None = None) -> dict[str, Any] | None:
    """:func:`message_detail`, recorded as ``message.show`` when the message exists."""
    return db.writer.call(partial(_detail_and_record, message_id=message_id, actor=actor))


def _detail_and_record(conn: Connection, message_id: int, actor: Actor | None) -> dict[str, Any] | None:
    detail = message_detail(conn, message_id)
    if detail is not None:
        record(conn, "message.show", "message", str(message_id), {"message_ids": [message_id]}, actor)
    return detail


def _query(f: MessageFilter) -> Select[Any]:
    q = select(*_LIST_COLUMNS).order_by(messages.c.id.desc()).limit(f.limit)
    equal = {
        messages.c.channel: f.channel, messages.c.status: f.status, messages.c.control_id: f.control_id,
        messages.c.patient_id: f.patient_id, messages.c.accession_number: f.accession_number,
    }
    for column, value in equal.items():
        if value is not None:
            q = q.where(column == value)
    if f.status is not None and f.status != "PROCESSED":
        q = q.where(text(UNPROCESSED_SQL))  # implied, said so that the partial index applies
    if f.message_type is not None:
        q = q.where(messages.c.message_type.like(f.message_type.replace("*", "%")))
    if f.since is not None:
        q = q.where(messages.c.received_at >= f.since)
    if f.until is not None:
        q = q.where(messages.c.received_at < f.until)
    return q


def message_detail(conn: Connection, message_id: int) -> dict[str, Any] | None:
    """Everything about one message: row, stages (the mapped records), outbox deliveries and the
    attempts at processing it (its receipt, then each ``messages replay``)."""
    row = conn.execute(select(messages).where(messages.c.id == message_id)).first()
    if row is None:
        return None
    detail = _jsonable(row)
    detail["raw"] = row.raw.decode("latin-1")
    mapped = detail.pop("mapped")
    detail["stages"] = [{"stage": "mapped", "status": "OK", "error": "", "content": mapped}] if mapped else []
    deliveries = conn.execute(
        select(outbox.c.id, outbox.c.destination, outbox.c.status, outbox.c.attempts, outbox.c.next_attempt_at,
               outbox.c.sent_at, outbox.c.last_error, outbox.c.response)
        .where(outbox.c.message_id == message_id).order_by(outbox.c.id))
    detail["deliveries"] = [_jsonable(d) for d in deliveries]
    detail["attempts"] = [{k: v.isoformat() if isinstance(v, datetime) else v for k, v in a.items()}
                          for a in attempts(conn, row)]
    return detail


def channel_status(conn: Connection, now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Per channel: received, errors, filtered, unchanged (AA, nothing done: ``messages show`` says
    why), queued and the oldest queued age in seconds."""
    now = now or datetime.now(UTC)
    out: dict[str, dict[str, Any]] = {}
    # Two index-only counts, never a pass over the message rows themselves (seconds at a few
    # hundred thousand messages with a cold cache): received on (channel, received_at), and
    # whatever is not PROCESSED on the partial index (status, id, channel). Grouped by status
    # first: SQLite then keeps to that covering index.
    received = conn.execute(select(messages.c.channel, func.count()).group_by(messages.c.channel))
    for channel, count in received:
        out.setdefault(channel, empty_counts())["received"] = count
    attention = conn.execute(select(messages.c.channel, messages.c.status, func.count())
                             .where(text(UNPROCESSED_SQL)).group_by(messages.c.status, messages.c.channel))
    for channel, status, count in attention:
        entry = out.setdefault(channel, empty_counts())
        if status in ("ERROR", "REJECTED"):
            entry["errors"] += count
        if status == "FILTERED":
            entry["filtered"] += count
        if status == "UNCHANGED":
            entry["unchanged"] += count
    acknowledged = conn.execute(
        select(messages.c.channel, func.count())
        .where(text(UNPROCESSED_SQL), messages.c.status.in_(["ERROR", "REJECTED"]),
               messages.c.acknowledged_at.isnot(None))
        .group_by(messages.c.channel))
    for channel, count in acknowledged:
        out.setdefault(channel, empty_counts())["errors_acknowledged"] = count
    _newest_errors(conn, out, now)
    queued = conn.execute(
        select(outbox.c.channel, outbox.c.status, func.count(), func.min(outbox.c.created_at))
        .where(outbox.c.status.in_([QUEUED, "ERROR"])).group_by(outbox.c.channel, outbox.c.status))
    for channel, status, count, oldest in queued:
        entry = out.setdefault(channel, empty_counts())
        if status == QUEUED:
            entry["queued"] = count
            oldest_at = oldest.replace(tzinfo=UTC) if oldest.tzinfo is None else oldest
            entry["oldest_queued_seconds"] = round((now - oldest_at).total_seconds(), 1)
        else:
            entry["delivery_errors"] = count
    return out


def _newest_errors(conn: Connection, out: dict[str, dict[str, Any]], now: datetime) -> None:
    """Per channel with messages answered AE/AR and not acknowledged (``messages ack``): the newest one's age in
    seconds (``newest_error_seconds``), so that one refused last night is told from one refused a month ago.
    The newest id per channel on the partial index, then that one row by its key."""
    newest = dict(conn.execute(
        select(messages.c.channel, func.max(messages.c.id))
        .where(text(UNPROCESSED_SQL), messages.c.status.in_(["ERROR", "REJECTED"]),
               messages.c.acknowledged_at.is_(None)).group_by(messages.c.channel)
    ).all())
    if not newest:
        return
    for channel, at in conn.execute(select(messages.c.channel, messages.c.received_at)
                                    .where(messages.c.id.in_(list(newest.values())))):
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        out.setdefault(channel, empty_counts())["newest_error_seconds"] = round((now - at).total_seconds(), 1)


def empty_counts() -> dict[str, Any]:
    return {"received": 0, "errors": 0, "errors_acknowledged": 0, "filtered": 0, "unchanged": 0, "queued": 0,
            "delivery_errors": 0,
            "oldest_queued_seconds": None, "newest_error_seconds": None}


def engine_status(conn: Connection) -> dict[str, Any]:
    """Channels, scheduled jobs (last run), worklist steps, studies scheduled or not, reports waiting."""
    from engine.domain.tables import procedure_steps

    jobs = {r.job_id: {"description": r.description, "last_run_at": r.last_run_at.isoformat(),
                       "last_result": r.last_result, "last_error": r.last_error, "runs": r.runs}
            for r in conn.execute(select(job_runs))}
    steps = {status: count for status, count in conn.execute(
        select(procedure_steps.c.status, func.count()).group_by(procedure_steps.c.status))}
    from engine.domain.reports import waiting_count

    reports = {"waiting_for_order": waiting_count(conn)}
    return {"channels": channel_status(conn), "jobs": jobs, "worklist_steps": steps, "reports": reports,
            "studies": study_counts(conn), "images": image_counts(conn), "reconcile": reconcile_backlog(conn),
            "archive_copies": copy_problems(conn)}


#: Copy states the fixity job, ``archive verify`` or ``archive restore`` record for a copy that is not intact.
_BAD_COPY = ("MISSING", "DAMAGED")


def copy_problems(conn: Connection) -> dict[str, int]:
    """Stored copies last found MISSING or DAMAGED (by the ``archive-fixity`` job, ``archive verify`` or
    ``archive restore``), current instances and old versions: how many of each (an instance whose two copies
    are both bad counts twice)."""
    from engine.archive.copy_tables import instance_copies as c
    from engine.domain.instance_tables import instance_versions as v

    counts = {state.lower(): 0 for state in _BAD_COPY}
    for table in (c, v):
        for column in (table.c.primary_state, table.c.secondary_state):
            for state, count in conn.execute(select(column, func.count()).where(column.in_(_BAD_COPY))
                                             .group_by(column)):
                counts[str(state).lower()] += int(count)
    return counts


def reconcile_backlog(conn: Connection, now: datetime | None = None) -> dict[str, Any]:
    """Requests the job ``reconcile-images`` has not finished (a late order's unscheduled studies, a patient's
    stored images to correct after A08/A31/A40/A47): how many, and the oldest one's age in seconds."""
    from engine.domain.reconcile_tables import reconcile_requests as r

    count, oldest = conn.execute(select(func.count(), func.min(r.c.created_at))).one()
    age = None
    if oldest is not None:
        at = oldest.replace(tzinfo=UTC) if oldest.tzinfo is None else oldest
        age = round(((now or datetime.now(UTC)) - at).total_seconds(), 1)
    return {"pending": int(count), "oldest_pending_seconds": age}


def image_counts(conn: Connection, now: datetime | None = None) -> dict[str, int]:
    """C-STORE requests answered with a failure status and kept in quarantine (docs/images.md): all of them,
    those of the last :data:`RECENT_REFUSALS`, and of these the processing failures (0xC211: a defect,
    not the sender's data set)."""
    from engine.domain.instance_tables import quarantined_instances as q
    from engine.domain.instances import PROCESSING_FAILURE

    since = (now or datetime.now(UTC)) - RECENT_REFUSALS
    total = conn.execute(select(func.count()).select_from(q)).scalar_one()
    # Grouped by the status itself: PostgreSQL does not take ``status = $1`` in the select list and
    # ``status = $2`` in GROUP BY for the same expression.
    recent: dict[int, int] = {int(status): int(count) for status, count in conn.execute(
        select(q.c.status, func.count()).where(q.c.received_at >= since).group_by(q.c.status))}
    return {"quarantined": int(total), "quarantined_last_24h": int(sum(recent.values())),
            "failed_last_24h": int(recent.get(PROCESSING_FAILURE, 0))}


def study_counts(conn: Connection) -> dict[str, int]:
    """Studies with stored images: linked to an order (scheduled) or not (unscheduled); reconciliation (#13)."""
    from engine.domain.tables import studies

    rows = conn.execute(select(studies.c.order_pk.is_not(None), func.count())
                        .where(studies.c.number_of_instances > 0).group_by(studies.c.order_pk.is_not(None))).all()
    counts = {"scheduled": 0, "unscheduled": 0}
    for linked, count in rows:
        counts["scheduled" if linked else "unscheduled"] += int(count)
    return counts
