"""Reconciliation as the storage SCP and the background job use it: match, map, coerce, link.

:class:`Reconciler` holds the compiled order-to-image mapping and the policies.
On C-STORE, :meth:`Reconciler.prepare` finds the image's order (one read
transaction), refuses it when its Patient ID conflicts with its study's (policy),
and coerces the header; once the stored file is indexed, :func:`reconcile_indexed`
links its study to the order in the same transaction. An image no order matches is
stored as received and its study stays unscheduled.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, BinaryIO, cast

from sqlalchemy import Connection, update

from engine.archive.structure import Encoding
from engine.config.models import EngineConfig
from engine.domain.instances import Indexed, InstanceAttributes, StudyLink, series_filed_elsewhere
from engine.domain.reconcile import (
    MatchPolicy,
    OrderMatch,
    PatientMismatchPolicy,
    find_linked_study,
    find_order,
    input_from_rows,
    link_study,
    order_rows,
    patient_conflict,
    patient_input,
    study_patient,
)
from engine.domain.studies import renamed_patient, resolve_dicom_patient
from engine.domain.tables import studies
from engine.errors import RadbridgeError
from engine.mapping import CompiledMapping, load_mapping
from engine.reconcile.coerce import COERCE, Modification, coerce_header
from engine.reconcile.keys import MatchKeys
from engine.reconcile.memo import CoercionMemo
from engine.reconcile.rewrite import (
    CoercedStream,
    Header,
    WholeStream,
    element_spans,
    elements_after_bulk,
    encode_coerced,
    encode_whole,
    read_header,
    read_whole,
    splice,
)
from engine.store.database import Database

__all__ = ["PatientMismatch", "Prepared", "Reconciler", "SeriesElsewhere", "reconcile_indexed"]

log = logging.getLogger(__name__)

#: Mapping outputs kept by :meth:`Reconciler.target` (orders whose images arrive at the same time).
_TARGETS_KEPT = 64


class PatientMismatch(RadbridgeError):
    """An image whose Patient ID is not its (stored) study's patient's, refused by policy."""


class SeriesElsewhere(RadbridgeError):
    """An image whose Series Instance UID is filed, with other images, under another study (and not by a
    coercion of this image's Study Instance UID): refused, never split across two studies."""


@dataclass(slots=True)
class Prepared:
    """What to store for one received image: the dataset stream, its index attributes, its order."""

    body: BinaryIO | CoercedStream | WholeStream
    attrs: InstanceAttributes
    match: OrderMatch | None = None
    changed: tuple[str, ...] = ()

    def stream(self) -> BinaryIO:
        """The dataset bytes to store, for :meth:`~engine.archive.location.ArchiveLocation.stage`
        (which only calls ``read``)."""
        return cast(BinaryIO, self.body)

    def received(self, sha256: str) -> None:
        """The received data set's hash, computed after :meth:`Reconciler.prepare` (beside it, in another
        thread): taken by a coerced body instead of hashing the spool again."""
        if isinstance(self.body, CoercedStream):
            self.body.received(sha256)

    @property
    def coerced(self) -> bool:
        """Whether the stored data set differs from the received one (computes nothing, unlike
        :meth:`received_sha256`, which hashes the spool when the received hash is not known yet)."""
        return isinstance(self.body, CoercedStream | WholeStream)

    def received_sha256(self) -> str:
        """The received dataset's hash when the stored one was coerced ("" when stored as received)."""
        return self.body.received_sha256 if isinstance(self.body, CoercedStream | WholeStream) else ""


@dataclass(slots=True)
class Reconciler:
    """Match, map and coerce with one compiled mapping and the ``reconcile:`` policies."""

    db: Database
    mapping: CompiledMapping | None
    policy: MatchPolicy = field(default_factory=MatchPolicy)
    patient_mismatch: PatientMismatchPolicy = "reject"
    modifying_system: str = "RADBRIDGE"
    _targets: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    _memo: CoercionMemo = field(default_factory=CoercionMemo, init=False, repr=False)

    @classmethod
    def from_config(cls, db: Database, config: EngineConfig) -> Reconciler:
        """The reconciler of ``reconcile:``; with ``enabled: false`` (or its mapping file missing, logged as
        an error) it matches nothing and images are stored as received."""
        cfg = config.reconcile
        mapping = None
        path = config.mappings_dir / f"{cfg.mapping}.yaml"
        if cfg.enabled and path.is_file():
            mapping = load_mapping(path, timezone=config.timezone)  # a broken file is a ConfigError at start
        elif cfg.enabled:
            log.error("reconciliation is off: reconcile.mapping %s not found in %s; images are stored as received"
                      " and their studies stay unscheduled", cfg.mapping, config.mappings_dir)
        return cls(db, mapping, MatchPolicy(timedelta(hours=cfg.completed_window_hours)), cfg.patient_id_mismatch,
                   cfg.modifying_system or config.dicom.ae_title)

    def target(self, conn: Connection, match: OrderMatch) -> dict[str, Any]:
        """The header values the mapping derives from the matched order (keyword -> value); read-only.

        The images of one study are matched to the same order one after the other: the mapping
        (a pure function of its input) runs again only when the order's stored rows changed.
        """
        assert self.mapping is not None
        rows = order_rows(conn, match)
        cached = self._targets.get(rows)
        if cached is not None:
            return cached
        records = self.mapping.apply_to(input_from_rows(rows)).records
        found = records[0] if records else {}
        if len(self._targets) >= _TARGETS_KEPT:
            self._targets.clear()
        self._targets[rows] = found
        return found

    def patient_target(self, conn: Connection, patient_pk: int) -> dict[str, Any]:
        """The header values for a study without an order: the mapping over the patient alone."""
        assert self.mapping is not None
        records = self.mapping.apply_to(patient_input(conn, patient_pk)).records
        return records[0] if records else {}

    def _decide(self, conn: Connection, keys: MatchKeys, now: datetime,
                attrs: InstanceAttributes | None = None) -> tuple[OrderMatch | None, str | None, dict[str, Any]]:
        """:meth:`_decide_patient`, after the series check: an image whose series is filed under another
        study joins it only when that study's Study Instance UID is what this image's received one was
        coerced to (``series.received_study_instance_uid``: a site mapping that coerces StudyInstanceUID);
        it then follows the same coercion (its study's order, and that Study Instance UID). Any other is
        :class:`SeriesElsewhere`."""
        if attrs is None:
            return self._decide_patient(conn, keys, now)
        decided = self._decide_patient(conn, keys, now)
        study_uid = str(decided[2].get("StudyInstanceUID") or keys.study_instance_uid)  # as it will be stored
        filed = series_filed_elsewhere(conn, attrs.series_instance_uid, study_uid, attrs.sop_instance_uid)
        if filed is None:
            return decided
        if self.mapping is None or not keys.study_instance_uid or (
                filed.received_study_instance_uid != keys.study_instance_uid):
            raise SeriesElsewhere("Series Instance UID filed under another study")
        follow = dataclasses.replace(keys, study_instance_uid=filed.study_instance_uid)
        match = find_linked_study(conn, filed.study_instance_uid)
        conflict = patient_conflict(conn, follow, match)
        target = dict(self.target(conn, match)) if match is not None else {}
        return match, conflict, {**target, "StudyInstanceUID": filed.study_instance_uid}

    def _decide_patient(self, conn: Connection, keys: MatchKeys, now: datetime) -> tuple[
            OrderMatch | None, str | None, dict[str, Any]]:
        """The order, a patient conflict, and the values to write: the order's, or, for an image no order
        matches whose Patient ID an A40 merged away or an A47 replaced, its surviving patient's (the
        same values a correction of its study would write: a late image of a trauma case shows the
        real patient at once, not after the next ADT), or for an image without a Patient ID of a stored
        study of a known patient, that patient's."""
        match = find_order(conn, keys, now, self.policy) if self.mapping is not None else None
        conflict = patient_conflict(conn, keys, match)
        if match is not None:
            return match, conflict, self.target(conn, match)
        if self.mapping is None:
            return None, conflict, {}
        if keys.patient_id:
            survivor = renamed_patient(conn, keys.patient_id, keys.issuer_of_patient_id)
        else:  # no Patient ID: a later image of a study of a known patient takes that patient's identity
            survivor = study_patient(conn, keys.study_instance_uid) if keys.study_instance_uid else None
        return None, conflict, (self.patient_target(conn, survivor) if survivor is not None else {})

    def prepare(self, spool: BinaryIO, offset: int, enc: Encoding | None, attrs: InstanceAttributes,
                calling_ae: str, now: datetime, parsed: Header | None = None, received_sha256: str = "") -> Prepared:
        """Match and coerce the dataset at ``offset`` of ``spool``; leaves ``spool`` at the body to copy.

        ``parsed``: the header the caller parsed already (:func:`read_header`; it may be
        coerced in place); ``received_sha256``: the received data set's hash, when the caller has
        it (not computed again for a coerced image). Raises :class:`PatientMismatch` when policy refuses the
        image, :class:`SeriesElsewhere` when its series is filed under another study. A
        deflated dataset (``enc`` None) is read and coerced whole.
        """
        if parsed is None and enc is not None:
            parsed = read_header(spool, offset, enc)
        header = parsed.dataset if parsed is not None else read_whole(spool)
        match, conflict, target = self.db.read(functools.partial(
            self._decide, keys=MatchKeys.from_dataset(header), now=now, attrs=attrs))
        if conflict is not None and self.patient_mismatch == "reject":
            raise PatientMismatch(conflict)
        spool.seek(offset)
        if not target:  # no order, or an order the mapping writes nothing from
            return Prepared(spool, attrs, match)
        mod = Modification(now, self.modifying_system, calling_ae, COERCE)
        if parsed is None:  # deflated: read, coerced and encoded whole
            changed = coerce_header(header, target, mod).changed
            if not changed:
                return Prepared(spool, attrs, match)
            self._log(attrs, match, changed)
            return Prepared(WholeStream(encode_whole(header), spool, offset), InstanceAttributes.from_dataset(header),
                            match, changed)
        return self._coerce(spool, parsed, attrs, match, target, mod, received_sha256)

    def _coerce(self, spool: BinaryIO, parsed: Header, attrs: InstanceAttributes, match: OrderMatch | None,
                target: dict[str, Any], mod: Modification, received_sha256: str) -> Prepared:
        """The header coerced to ``target`` and spliced (:mod:`engine.reconcile.rewrite`), or as an earlier
        header with the same inputs was (:mod:`engine.reconcile.memo`: same bytes, without pydicom)."""
        spans = element_spans(parsed)
        key = self._memo.key(parsed, spans, target, mod)
        recalled = self._memo.recall(key, target, mod.when)
        if recalled is not None:
            if not recalled.changed:
                return Prepared(spool, attrs, match)
            head = splice(parsed.raw, spans, recalled.elements)
            after = dataclasses.replace(attrs, **recalled.extra)
            changed = recalled.changed
        else:
            coercion = coerce_header(parsed.dataset, target, mod)
            changed = coercion.changed
            if not changed:
                self._memo.remember(key, target, coercion, {}, mod.when)
                return Prepared(spool, attrs, match)
            if coercion.charset_changed and elements_after_bulk(spool, parsed):  # their text re-encoded too
                parsed = read_header(spool, parsed.bulk_at - len(parsed.raw), parsed.enc, whole=True)
                coercion = coerce_header(parsed.dataset, target, mod)
                spans = element_spans(parsed)
            after = InstanceAttributes.from_dataset(parsed.dataset)
            coerced = encode_coerced(parsed, coercion, spans)
            head = coerced.head
            if coerced.elements is not None:  # spliced (not encoded whole after a character set change)
                self._memo.remember(key, target, coercion, coerced.elements, mod.when, after.values_at(coercion.tags()))
        self._log(attrs, match, changed)
        return Prepared(CoercedStream(head, parsed.raw, spool, parsed.bulk_at, received_sha256), after, match, changed)

    @staticmethod
    def _log(attrs: InstanceAttributes, match: OrderMatch | None, changed: tuple[str, ...]) -> None:
        if match is None:
            log.info("C-STORE %s: no order matched; its Patient ID was merged, replaced or absent: coerced %s to"
                     " its patient", attrs.sop_instance_uid, ",".join(changed))
            return
        log.info("C-STORE %s: matched order %d by %s, coerced %s", attrs.sop_instance_uid, match.order_pk,
                 match.matched_by, ",".join(changed))


def reconcile_indexed(conn: Connection, attrs: InstanceAttributes, indexed: Indexed, match: OrderMatch | None,
                      strict: bool = True) -> None:
    """After :func:`~engine.domain.instances.index_instance_row` indexed something (``indexed.changed``),
    in the same transaction: the study linked to ``match``.

    With ``strict`` (reconciliation on), only the matcher links a study: a study this
    image created, or found unlinked, is not left linked by the index's plain lookup of
    an order by Study Instance UID or accession alone (which ignores the step's status
    and the patient), so it shows as unscheduled until a real match. An image joining a
    known series leaves the study's link as it was (:attr:`Indexed.link`): then nothing
    is written when the study is already linked to ``match`` as :func:`link_study` would
    link it, and there is nothing to undo.
    """
    if match is not None:
        if not _linked_to(indexed.link, match):
            link_study(conn, indexed.study_pk, match)
    elif strict and indexed.linkable:
        st = studies.c
        patient_pk = resolve_dicom_patient(conn, attrs.patient_id, attrs.issuer_of_patient_id)
        conn.execute(update(studies).where(st.id == indexed.study_pk, st.order_pk.is_not(None)).values(
            order_pk=None, step_pk=None, patient_pk=patient_pk, accession_number=attrs.accession_number))


def _linked_to(link: StudyLink | None, match: OrderMatch) -> bool:
    """True when the study's link is already what :func:`link_study` would write for ``match``."""
    return link is not None and (link.order_pk, link.step_pk, link.patient_pk, link.accession_number) == (
        match.order_pk, match.step_pk, match.patient_pk, link.order_accession)
