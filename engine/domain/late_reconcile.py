"""Rewriting a study that is already stored: a late order, an operator's ``studies link``, an ADT correction.

Each instance's file is read (header only; the bulk is streamed), coerced to the
order's values with a new OriginalAttributesSequence item (COERCE; CORRECT after an
ADT update or merge or an order update, :func:`correct_study`), and written as
a new file beside the old one (``<SOPInstanceUID>.<hash>.dcm``, durable before it is
indexed). Then one transaction points every instance at its new file (the old
file stays, with an ``instance_versions`` row), updates the study's attributes and
links the study to its order. A crash before that commit leaves unindexed files and
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
from typing import Any, BinaryIO, cast

from sqlalchemy import Connection, select, update

from engine.archive.location import ArchiveLocation
from engine.archive.part10 import dataset_offset
from engine.archive.replication import owe_rewritten_copy
from engine.config.models import EngineConfig
from engine.domain.correction_message import CorrectedPatient
from engine.domain.housekeeping import Job
from engine.domain.instance_tables import instance_versions, instances
from engine.domain.instances import InstanceAttributes
from engine.domain.reconcile import (
    OPEN_STEPS,
    OrderMatch,
    Request,
    finish_request,
    link_study,
    take_requests,
)
from engine.domain.reconciler import Reconciler
from engine.domain.reforward import Correction, CorrectionPolicy, queue_correction
from engine.domain.studies import resolve_dicom_patient
from engine.domain.tables import orders, procedure_steps, studies
from engine.reconcile.coerce import CORRECT, Modification, coerce
from engine.reconcile.rewrite import (
    CoercedStream,
    WholeStream,
    encode_header,
    encode_whole,
    encoding_of,
    read_header,
    read_whole,
)
from engine.store.database import Database

__all__ = ["Pace", "Rewritten", "correct_study", "late_jobs", "match_for_order", "reconcile_job", "reconcile_study",
           "unscheduled_for_order"]

log = logging.getLogger(__name__)
_HEAD = 1 << 16


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


@dataclass(frozen=True, slots=True)
class Rewritten:
    """One instance's coerced file, durable, about to be indexed."""

    instance_pk: int
    path: str
    size: int
    sha256: str
    attrs: InstanceAttributes
    changed: tuple[str, ...] = ()
    patient: CorrectedPatient | None = None

    def correction(self) -> Correction:
        """What :func:`~engine.domain.reforward.queue_correction` needs to know."""
        assert self.patient is not None
        return Correction(self.instance_pk, self.attrs, self.changed, self.patient)


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


def _rewrite(location: ArchiveLocation, row: Any, target: dict[str, Any], mod: Modification) -> Rewritten | None:
    """Coerce one stored file into a new one; None when nothing changes."""
    enc = encoding_of(row.transfer_syntax_uid)
    with open(location.path(row.path), "rb") as f:
        offset = dataset_offset(f.read(_HEAD))
        f.seek(0)
        meta = f.read(offset)
        header = read_header(f, offset, enc) if enc is not None else None
        ds = header.dataset if header is not None else read_whole(f)
        prior = (str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or ""))
        changed = coerce(ds, target, mod)
        if not changed:
            return None
        stream = (CoercedStream(encode_header(ds, header.enc), header.raw, f, header.bulk_at)
                  if header is not None else WholeStream(encode_whole(ds), f, offset))
        staged = location.stage(meta, cast(BinaryIO, stream))
    attrs = InstanceAttributes.from_dataset(ds)
    stem = f"{attrs.study_instance_uid}/{attrs.series_instance_uid}/{attrs.sop_instance_uid}"
    path, _ = location.place(staged, [f"{stem}.{staged.sha256[:16]}.dcm"])
    return Rewritten(int(row.id), path, staged.size, staged.sha256, attrs, changed,
                     CorrectedPatient.from_dataset(ds, *prior))


def _index(conn: Connection, study_uid: str, match: OrderMatch | None, done: list[Rewritten],
           now: datetime, policy: CorrectionPolicy | None = None) -> None:
    """Point the instances at their coerced files, refresh the study's attributes, link it (with ``match``),
    and queue what the destinations' ``on_correction`` asks for (with ``policy``): one transaction."""
    study_pk = conn.execute(select(studies.c.id).where(studies.c.study_instance_uid == study_uid)).scalar_one()
    received_from: dict[int, str] = {}
    for new in done:
        old = conn.execute(select(instances).where(instances.c.id == new.instance_pk)).one()
        received_from[int(old.id)] = str(old.received_from_ae or "")
        conn.execute(instance_versions.insert().values(
            instance_pk=old.id, sha256=old.sha256, size=old.size, location=old.location, path=old.path,
            received_from_ae=old.received_from_ae, received_at=old.received_at, replaced_at=now))
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
        queue_correction(conn, [new.correction() for new in done], received_from, policy, now)


def reconcile_study(db: Database, location: ArchiveLocation, reconciler: Reconciler, study_uid: str,
                    match: OrderMatch, now: datetime, policy: CorrectionPolicy | None = None,
                    pace: Pace = Pace()) -> int:
    """Coerce every stored instance of ``study_uid`` to ``match``'s order and link the study; how many changed.

    With ``policy``, the rewritten instances are queued again per destination (:mod:`engine.domain.reforward`)
    in the transactions that index them (one per ``pace.batch`` instances); the study is linked in the last.
    """
    target = db.read(functools.partial(reconciler.target, match=match))
    count = _rewrite_study(db, location, study_uid, target, Modification(now, reconciler.modifying_system),
                           _Indexing(match, now, policy, always_link=True), pace)
    log.info("study reconciled with order %d (%s): %d instance(s) coerced", match.order_pk, match.matched_by,
             count)
    return count


def correct_study(db: Database, location: ArchiveLocation, reconciler: Reconciler, study_uid: str,
                  now: datetime, policy: CorrectionPolicy | None = None, pace: Pace = Pace()) -> int:
    """PIR: bring a stored study's images in line with its order and patient as they are now (reason CORRECT).

    A linked study is corrected from its order (whose patient a merge may have changed,
    whose values an order update may have changed), an unscheduled one from its patient
    alone. Idempotent: an image that already holds every value is left as it is (and not
    queued again), so a crash between two batches (``pace``) only redoes the unindexed
    ones. Returns how many instances changed.
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
    count = _rewrite_study(db, location, study_uid, target,
                           Modification(now, reconciler.modifying_system, reason=CORRECT),
                           _Indexing(match, now, policy, always_link=False), pace)
    if count:
        log.info("study corrected: %d instance(s) rewritten", count)
    return count


@dataclass(frozen=True, slots=True)
class _Indexing:
    """What each batch's :func:`_index` transaction does besides pointing instances at their new files."""

    match: OrderMatch | None
    now: datetime
    policy: CorrectionPolicy | None
    always_link: bool  # a late order links the study even when no image changes


def _rewrite_study(db: Database, location: ArchiveLocation, study_uid: str, target: dict[str, Any],
                   mod: Modification, indexing: _Indexing, pace: Pace) -> int:
    """Rewrite every instance of the study that ``target`` changes, ``pace.batch`` at a time, each batch's
    files durable and then indexed in one transaction; the study is linked (``indexing.match``) in the last,
    when anything changed or ``indexing.always_link``. Returns how many instances changed."""
    rows = [row for row in db.read(lambda conn: conn.execute(
        select(instances).join(studies, studies.c.id == instances.c.study_pk)
        .where(studies.c.study_instance_uid == study_uid).order_by(instances.c.id)).all())
        if _here(row, location)]
    count = 0
    for start in range(0, max(len(rows), 1), pace.batch):
        started = time.monotonic()
        done = [new for row in rows[start:start + pace.batch]
                if (new := _rewrite(location, row, target, mod)) is not None]
        count += len(done)
        last = start + pace.batch >= len(rows)
        link = last and (count > 0 or indexing.always_link)
        if done or link:
            db.writer.call(functools.partial(_index, study_uid=study_uid, match=indexing.match if link else None,
                                             done=done, now=indexing.now, policy=indexing.policy))
        if not last:
            pace.rest(started)
    return count


def _here(row: Any, location: ArchiveLocation) -> bool:
    if row.location != location.name:
        log.warning("study reconciliation: instance %s is in location %s, not %s: left as stored",
                    row.sop_instance_uid, row.location, location.name)
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
    location: ArchiveLocation
    reconciler: Reconciler
    policy: CorrectionPolicy
    pace: Pace


def _handle(ctx: _Context, request: Request) -> int:
    db, now = ctx.db, datetime.now(UTC)
    count = 0
    if request.order_pk is not None:
        order_pk = int(request.order_pk)
        match = db.read(functools.partial(match_for_order, order_pk=order_pk, by="late_order"))
        if match is not None:
            for uid in db.read(functools.partial(unscheduled_for_order, order_pk=order_pk)):
                count += reconcile_study(db, ctx.location, ctx.reconciler, uid, match, now, ctx.policy, ctx.pace)
        for uid in db.read(functools.partial(_studies_of_order, order_pk=order_pk)):
            count += correct_study(db, ctx.location, ctx.reconciler, uid, now, ctx.policy, ctx.pace)
    if request.patient_pk is not None:
        for uid in db.read(functools.partial(_studies_of, patient_pk=int(request.patient_pk))):
            count += correct_study(db, ctx.location, ctx.reconciler, uid, now, ctx.policy, ctx.pace)
    db.writer.call(functools.partial(finish_request, request_id=request.id))
    return count


def reconcile_job(db: Database, location: ArchiveLocation, reconciler: Reconciler, every: float,
                  policy: CorrectionPolicy | None = None, pace: Pace = Pace()) -> Job:
    """The background job: late orders, order updates and ADT corrections; the number of instances rewritten.

    A request is dropped only after every study it names is done; a crash in between
    runs it again, which finds the images already corrected (nothing rewritten or queued twice).
    ``pace`` bounds each index transaction and yields to receive traffic between batches.
    """
    ctx = _Context(db, location, reconciler, policy or CorrectionPolicy(()), pace)

    def run() -> int:
        ctx.policy.adts_queued.clear()
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
    location = ArchiveLocation("primary", config.archive_dir())
    cfg = config.reconcile
    return [reconcile_job(db, location, reconciler, cfg.poll_interval_seconds, CorrectionPolicy.from_config(config),
                          Pace(cfg.correction_batch, cfg.correction_yield_ratio))]
