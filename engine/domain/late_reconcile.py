"""Rewriting a study that is already stored: a late order, an operator's ``studies link``, an ADT correction.

Each instance's current version is read through the archive (the primary file checked
against its checksums, else a verified copy from either location: a tiered, missing or
damaged primary copy, or an object-store primary; :mod:`engine.domain.rewrite_instance`),
coerced to the order's values with a new OriginalAttributesSequence item (COERCE;
CORRECT after an ADT update or merge or an order update, :func:`correct_study`), and
written as a new file in the primary (``<SOPInstanceUID>.<hash>.dcm``, durable before it
is indexed; its copy to the secondary is owed in the index transaction, and a tiered
instance leaves the primary again at the next tiering run). Then one transaction points
every instance at its new file (the old file stays, with an ``instance_versions`` row
recording where its copies are), updates the study's attributes and links the study to
its order. A crash before that commit leaves unindexed files and
an unscheduled study: the next run does it again. A study already linked to an
order is left alone (idempotent).

The background job (:func:`reconcile_job`) handles the ``reconcile_requests`` the
order handler (:func:`engine.domain.reconcile.request_for_orders`: a late order, or an
order update such as XO that may change coerced values) and the patients handler
(:func:`engine.domain.reconcile.request_for_patient`) write. The transaction that
indexes rewritten instances also queues them again for the DICOM destinations, per
destination's ``on_correction`` (:mod:`engine.domain.reforward`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select, update

from engine.archive.copy_tables import instance_copies, replaced_version_copies
from engine.archive.replication import owe_rewritten_copy
from engine.archive.rewriting import RewriteIO
from engine.config.models import EngineConfig
from engine.domain.housekeeping import Job
from engine.domain.instance_tables import instance_versions, instances
from engine.domain.reconcile import (
    OPEN_STEPS,
    OrderMatch,
    Request,
    finish_request,
    link_study,
    take_requests,
)
from engine.domain.reconciler import Reconciler
from engine.domain.reforward import CorrectionEvent, CorrectionPolicy, queue_correction
from engine.domain.rewrite_instance import Rewritten, rewrite_instance
from engine.domain.studies import resolve_dicom_patient
from engine.domain.tables import orders, procedure_steps, studies
from engine.reconcile.coerce import CORRECT, Modification
from engine.store.database import Database

__all__ = ["Pace", "correct_study", "late_jobs", "match_for_order", "reconcile_job", "reconcile_study",
           "unscheduled_for_order"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pace:
    """How a correction yields to receive traffic (issue #13: C-STORE and MLLP ACK p99 within 1.2x).

    A study is rewritten ``batch`` instances at a time, each batch indexed in its own writer
    transaction, so C-STORE's group commit never queues behind one big correction
    transaction; after a batch (when more follow) the job sleeps ``yield_ratio`` times the
    batch's duration, leaving the disk (each rewritten file is fsynced), the CPU and the
    writer to the receivers. Total time grows by about that ratio.
    """

    batch: int = 10
    yield_ratio: float = 3.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.batch < 1 or self.yield_ratio < 0:
            raise ValueError(f"Pace needs batch >= 1 and yield_ratio >= 0, not {self.batch}, {self.yield_ratio}")

    def rest(self, started: float) -> None:
        """Sleep in proportion to the work done since ``started`` (a ``time.monotonic()``)."""
        if self.yield_ratio > 0:
            self.sleep((time.monotonic() - started) * self.yield_ratio)


def match_for_order(conn: Connection, order_pk: int, by: str, any_status: bool = False) -> OrderMatch | None:
    """The order as a match: its first candidate step (any step with ``any_status``) and its patient."""
    s, o = procedure_steps.c, orders.c
    q = (select(s.id, o.patient_pk).join(orders, s.order_pk == o.id).where(o.id == order_pk).order_by(s.id))
    row = conn.execute(q if any_status else q.where(s.status.in_(OPEN_STEPS))).first()
    return OrderMatch(order_pk, int(row.id), int(row.patient_pk), by) if row is not None else None


def unscheduled_for_order(conn: Connection, order_pk: int) -> list[str]:
    """Study UIDs of unscheduled studies the order names: same Study Instance UID, or same accession
    number with a Patient ID that resolves to the order's patient."""
    o = conn.execute(select(orders.c.study_instance_uid, orders.c.accession_number, orders.c.patient_pk)
                     .where(orders.c.id == order_pk)).one()
    st = studies.c
    rows = conn.execute(select(st.study_instance_uid, st.accession_number, st.patient_id, st.issuer_of_patient_id)
                        .where(st.order_pk.is_(None), st.number_of_instances > 0,
                               (st.study_instance_uid == o.study_instance_uid)
                               | ((st.accession_number == o.accession_number) & (st.accession_number != "")))).all()
    return [r.study_instance_uid for r in rows if r.study_instance_uid == o.study_instance_uid
            or resolve_dicom_patient(conn, r.patient_id, r.issuer_of_patient_id) == o.patient_pk]


def _index(conn: Connection, study_uid: str, match: OrderMatch | None, done: list[Rewritten],
           now: datetime, policy: CorrectionPolicy | None = None, event: CorrectionEvent | None = None) -> None:
    """Point the instances at their coerced files, refresh the study's attributes, link it (with ``match``),
    and queue what the destinations' ``on_correction`` asks for (with ``policy``): one transaction."""
    study_pk = conn.execute(select(studies.c.id).where(studies.c.study_instance_uid == study_uid)).scalar_one()
    received_from: dict[int, str] = {}
    for new in done:
        old = conn.execute(select(instances).where(instances.c.id == new.instance_pk)).one()
        received_from[int(old.id)] = str(old.received_from_ae or "")
        conn.execute(instance_versions.insert().values(
            instance_pk=old.id, sha256=old.sha256, size=old.size, location=old.location, path=old.path,
            received_from_ae=old.received_from_ae, received_at=old.received_at, replaced_at=now,
            **replaced_version_copies(conn, int(old.id))))
        conn.execute(update(instances).where(instances.c.id == old.id).values(
            path=new.path, size=new.size, sha256=new.sha256, received_sha256=old.received_sha256 or old.sha256,
            versions=int(old.versions) + 1))
        owe_rewritten_copy(conn, int(old.id), now)  # the new version reaches the secondary too
    if done:
        a = done[0].attrs
        conn.execute(update(studies).where(studies.c.id == study_pk).values(
            patient_id=a.patient_id, issuer_of_patient_id=a.issuer_of_patient_id, patient_name=a.patient_name,
            study_description=a.study_description, study_id=a.study_id, last_seen_at=now))
    if match is not None:
        link_study(conn, int(study_pk), match)
    if policy is not None:
        queue_correction(conn, [new.correction() for new in done], received_from, policy, now, event)


def reconcile_study(db: Database, io: RewriteIO, reconciler: Reconciler, study_uid: str,
                    match: OrderMatch, now: datetime, policy: CorrectionPolicy | None = None,
                    pace: Pace = Pace(), event: CorrectionEvent | None = None) -> int:
    """Coerce every stored instance of ``study_uid`` to ``match``'s order and link the study; how many changed.

    With ``policy``, the rewritten instances are queued again per destination (:mod:`engine.domain.reforward`)
    in the transactions that index them (one per ``pace.batch`` instances); the study is linked in the last.
    """
    target = db.read(functools.partial(reconciler.target, match=match))
    count = _rewrite_study(db, io, study_uid, target, Modification(now, reconciler.modifying_system),
                           _Indexing(match, now, policy, event, always_link=True), pace)
    log.info("study reconciled with order %d (%s): %d instance(s) coerced", match.order_pk, match.matched_by,
             count)
    return count


def correct_study(db: Database, io: RewriteIO, reconciler: Reconciler, study_uid: str,
                  now: datetime, policy: CorrectionPolicy | None = None, pace: Pace = Pace(),
                  event: CorrectionEvent | None = None) -> int:
    """PIR: bring a stored study's images in line with its order and patient as they are now (reason CORRECT).

    A linked study is corrected from its order (whose patient a merge may have changed,
    whose values an order update may have changed), an unscheduled one from its patient
    alone. Idempotent: an image that already holds every value is left as it is (and not
    queued again), so a crash between two batches (``pace``) only redoes the unindexed
    ones; ``event`` (the request's) keys what is queued for ``policy`` so that a rerun queues
    no second ADT. Returns how many instances changed.
    """
    linked = db.read(lambda conn: conn.execute(
        select(studies.c.order_pk, studies.c.step_pk, studies.c.patient_pk, orders.c.patient_pk.label("owner"))
        .outerjoin(orders, orders.c.id == studies.c.order_pk)
        .where(studies.c.study_instance_uid == study_uid)).one())
    match = None
    if linked.order_pk is not None and linked.step_pk is not None:
        match = OrderMatch(int(linked.order_pk), int(linked.step_pk), int(linked.owner), "correction")
        target = db.read(functools.partial(reconciler.target, match=match))
    elif linked.patient_pk is not None:
        target = db.read(functools.partial(reconciler.patient_target, patient_pk=int(linked.patient_pk)))
    else:
        return 0
    count = _rewrite_study(db, io, study_uid, target, Modification(now, reconciler.modifying_system, reason=CORRECT),
                           _Indexing(match, now, policy, event, always_link=False), pace)
    if count:
        log.info("study corrected: %d instance(s) rewritten", count)
    return count


@dataclass(frozen=True, slots=True)
class _Indexing:
    """What each batch's :func:`_index` transaction does besides pointing instances at their new files."""

    match: OrderMatch | None
    now: datetime
    policy: CorrectionPolicy | None
    event: CorrectionEvent | None
    always_link: bool  # a late order links the study even when no image changes


def _rewrite_study(db: Database, io: RewriteIO, study_uid: str, target: dict[str, Any],
                   mod: Modification, indexing: _Indexing, pace: Pace) -> int:
    """Rewrite every instance of the study that ``target`` changes, ``pace.batch`` at a time, each batch's
    files durable and then indexed in one transaction; the study is linked (``indexing.match``) in the last,
    when anything changed or ``indexing.always_link``. Returns how many instances changed."""
    c = instance_copies.c
    rows = [row for row in db.read(lambda conn: conn.execute(
        select(instances, c.meta_sha256, c.primary_state, c.secondary_state)
        .join(studies, studies.c.id == instances.c.study_pk)
        .outerjoin(instance_copies, c.instance_pk == instances.c.id)
        .where(studies.c.study_instance_uid == study_uid).order_by(instances.c.id)).all())
        if _here(row, io)]
    count = 0
    for start in range(0, max(len(rows), 1), pace.batch):
        started = time.monotonic()
        done = [new for row in rows[start:start + pace.batch]
                if (new := rewrite_instance(io, row, target, mod)) is not None]
        count += len(done)
        last = start + pace.batch >= len(rows)
        link = last and (count > 0 or indexing.always_link)
        if done or link:
            db.writer.call(functools.partial(_index, study_uid=study_uid, match=indexing.match if link else None,
                                             done=done, now=indexing.now, policy=indexing.policy,
                                             event=indexing.event))
        if not last:
            pace.rest(started)
    return count


def _here(row: Any, io: RewriteIO) -> bool:
    if row.location != io.primary.name:
        log.warning("study reconciliation: instance %s is in location %s, not %s: left as stored",
                    row.sop_instance_uid, row.location, io.primary.name)
        return False
    return True


def _studies_of(conn: Connection, patient_pk: int) -> list[str]:
    st = studies.c
    return [str(r[0]) for r in conn.execute(select(st.study_instance_uid).where(
        st.patient_pk == patient_pk, st.number_of_instances > 0).order_by(st.id))]


def _studies_of_order(conn: Connection, order_pk: int) -> list[str]:
    """The stored studies linked to the order (an order update corrects them: XO)."""
    st = studies.c
    return [str(r[0]) for r in conn.execute(select(st.study_instance_uid).where(
        st.order_pk == order_pk, st.number_of_instances > 0).order_by(st.id))]


@dataclass(frozen=True, slots=True)
class _Context:
    db: Database
    io: RewriteIO
    reconciler: Reconciler
    policy: CorrectionPolicy
    pace: Pace


def _handle(ctx: _Context, request: Request) -> int:
    db, now = ctx.db, datetime.now(UTC)
    event = CorrectionEvent(request.event_key, request.trigger)
    count = 0
    if request.order_pk is not None:
        order_pk = int(request.order_pk)
        match = db.read(functools.partial(match_for_order, order_pk=order_pk, by="late_order"))
        if match is not None:
            for uid in db.read(functools.partial(unscheduled_for_order, order_pk=order_pk)):
                count += reconcile_study(db, ctx.io, ctx.reconciler, uid, match, now, ctx.policy, ctx.pace, event)
        for uid in db.read(functools.partial(_studies_of_order, order_pk=order_pk)):
            count += correct_study(db, ctx.io, ctx.reconciler, uid, now, ctx.policy, ctx.pace, event)
    if request.patient_pk is not None:
        for uid in db.read(functools.partial(_studies_of, patient_pk=int(request.patient_pk))):
            count += correct_study(db, ctx.io, ctx.reconciler, uid, now, ctx.policy, ctx.pace, event)
    db.writer.call(functools.partial(finish_request, request=request))
    return count


def reconcile_job(db: Database, io: RewriteIO, reconciler: Reconciler, every: float,
                  policy: CorrectionPolicy | None = None, pace: Pace = Pace()) -> Job:
    """The background job: late orders, order updates and ADT corrections; the number of instances rewritten.

    A request is dropped only after every study it names is done; a crash in between
    runs it again, which finds the images already corrected (nothing rewritten or queued twice:
    an ``on_correction: hl7`` ADT is keyed by the request's event key, :mod:`engine.domain.reforward`).
    A location that cannot be read fails the run and leaves the request for the next.
    ``pace`` bounds each index transaction and yields to receive traffic between batches.
    """
    ctx = _Context(db, io, reconciler, policy or CorrectionPolicy(()), pace)

    def run() -> int:
        total = 0
        while pending := db.read(take_requests):
            for request in pending:
                total += _handle(ctx, request)
        return total

    return Job("reconcile-images", "stored images follow late orders, order updates and ADT corrections", every,
               run)


def late_jobs(db: Database, config: EngineConfig) -> list[Job]:
    """The reconciliation job when images are stored and reconciled (``archive`` and ``reconcile`` enabled)."""
    if not (config.dicom.enabled and config.archive.enabled and config.reconcile.enabled):
        return []
    reconciler = Reconciler.from_config(db, config)
    if reconciler.mapping is None:
        return []
    cfg = config.reconcile
    return [reconcile_job(db, RewriteIO.from_config(config), reconciler, cfg.poll_interval_seconds,
                          CorrectionPolicy.from_config(config), Pace(cfg.correction_batch, cfg.correction_yield_ratio))]
