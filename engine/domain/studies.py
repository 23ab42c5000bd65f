"""The study index: studies and series keyed by their instance UIDs, as far as they are known.

Today MPPS is the source (PS3.4 F.7.2: the Scheduled Step Attributes Sequence
names the study, the Performed Series Sequence its series and instances); the
C-STORE issue adds received instances through :func:`upsert_study` and
:func:`upsert_series`. A study belongs to a patient and, when its Study
Instance UID or accession number is an order's, to that order. Merges (A40)
move studies with the patient's orders (:func:`move_studies`).

DICOM for a merged or renamed patient id is accepted and attached to the
survivor (reference section 7), whatever the HL7 merged-id policy says:
:func:`resolve_dicom_patient`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import NoResultFound

from engine.domain.tables import orders, patient_merges, patients, series, studies
from engine.store.fast import FastStatement, all_rows, first_row

__all__ = [
    "PerformedSeries",
    "StudyRef",
    "move_studies",
    "performed_series",
    "record_performed",
    "recount",
    "renamed_patient",
    "resolve_dicom_patient",
    "study_refs",
    "upsert_series",
    "upsert_study",
]

_MAX_MERGE_CHAIN = 32


@dataclass(frozen=True, slots=True)
class StudyRef:
    """A study named by one Scheduled Step Attributes item (UID, accession)."""

    study_instance_uid: str
    accession_number: str = ""


@dataclass(frozen=True, slots=True)
class PerformedSeries:
    """One Performed Series Sequence item (PS3.3 C.4.15)."""

    series_instance_uid: str
    modality: str = ""
    series_description: str = ""
    number_of_instances: int = 0


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "")


def study_refs(ds: Dataset) -> list[StudyRef]:
    """The distinct studies an MPPS references, in the order of its scheduled step items."""
    refs: dict[str, StudyRef] = {}
    for item in ds.get("ScheduledStepAttributesSequence", None) or []:
        uid = _text(item, "StudyInstanceUID")
        if uid and uid not in refs:
            refs[uid] = StudyRef(uid, _text(item, "AccessionNumber")[:16])
    return list(refs.values())


def performed_series(ds: Dataset) -> list[PerformedSeries]:
    """The series an MPPS reports, with image and non-image references counted together."""
    modality = _text(ds, "Modality")[:16]
    found = []
    for item in ds.get("PerformedSeriesSequence", None) or []:
        uid = _text(item, "SeriesInstanceUID")
        if not uid:
            continue
        refs = [
            *(item.get("ReferencedImageSequence", None) or []),
            *(item.get("ReferencedNonImageCompositeSOPInstanceSequence", None) or []),
        ]
        found.append(
            PerformedSeries(uid, modality, _text(item, "SeriesDescription")[:64], len(refs))
        )
    return found


_SURVIVOR_STEP = FastStatement(
    select(patients.c.status, patients.c.merged_into_id).where(patients.c.id == bindparam("pk")))


def _survivor(conn: Connection, pk: int) -> int:
    """Follow ``merged_into_id`` to the patient that absorbed ``pk`` (itself if not merged).

    Compiled once (:class:`~engine.store.fast.FastStatement`): every matched image resolves its
    Patient ID, and Core's per-call statement construction cost more than the lookup itself.
    """
    for _ in range(_MAX_MERGE_CHAIN):
        row = first_row(_SURVIVOR_STEP, conn, {"pk": pk})
        if row is None:
            raise NoResultFound(f"patient {pk} not found")
        if row.status != "MERGED" or row.merged_into_id is None:
            return pk
        pk = int(row.merged_into_id)
    return pk


def _patient_lookups(with_issuer: bool) -> tuple[FastStatement, FastStatement]:
    """The two lookups of :func:`resolve_dicom_patient` (by current id, then by a merged or replaced
    one), compiled once: every received image resolves its Patient ID."""
    p, m = patients.c, patient_merges.c
    current = [p.patient_id == bindparam("pid")] + ([p.issuer == bindparam("issuer")] if with_issuer else [])
    prior = [m.prior_patient_id == bindparam("pid")] + ([m.prior_issuer == bindparam("issuer")] if with_issuer else [])
    return (FastStatement(select(p.id).where(*current).limit(2)),
            FastStatement(select(m.survivor_pk).where(*prior).order_by(m.id.desc()).limit(1)))


_PATIENT_LOOKUPS = {with_issuer: _patient_lookups(with_issuer) for with_issuer in (False, True)}


def resolve_dicom_patient(conn: Connection, patient_id: str, issuer: str = "") -> int | None:
    """The patient DICOM with this PatientID (+ issuer) belongs to, following A40 and A47.

    A merged id resolves to its survivor; an id replaced by A47 resolves to the
    renamed patient. Without an issuer, an id that is unique across issuers matches.
    """
    if not patient_id:
        return None
    by_current, by_prior = _PATIENT_LOOKUPS[bool(issuer)]
    params = {"pid": patient_id, "issuer": issuer}
    rows = all_rows(by_current, conn, params)
    if len(rows) != 1:
        rows = all_rows(by_prior, conn, params)
    return _survivor(conn, int(rows[0][0])) if rows else None


def _renamed_lookups(with_issuer: bool) -> tuple[FastStatement, FastStatement]:
    """The two lookups of :func:`renamed_patient`: every patient row holding the id (merged ones too),
    then the merges and id changes that retired it (with the issuer each retired it under)."""
    p, m = patients.c, patient_merges.c
    holders = [p.patient_id == bindparam("pid")] + ([p.issuer == bindparam("issuer")] if with_issuer else [])
    prior = [m.prior_patient_id == bindparam("pid")] + ([m.prior_issuer == bindparam("issuer")] if with_issuer else [])
    return (FastStatement(select(p.id, p.status).where(*holders).limit(3)),
            FastStatement(select(m.survivor_pk, m.prior_issuer).where(*prior).order_by(m.id.desc()).limit(8)))


_RENAMED_LOOKUPS = {with_issuer: _renamed_lookups(with_issuer) for with_issuer in (False, True)}


def renamed_patient(conn: Connection, patient_id: str, issuer: str = "") -> int | None:
    """The patient now known under another id, when this PatientID (+ issuer) can only be one an A40 merged
    away or an A47 replaced; else None (a current id, an unknown one, or an ambiguous one).

    Its answer rewrites an image's patient, so it is stricter than :func:`resolve_dicom_patient`: without
    an issuer, an id that a current patient holds under any issuer, or that was retired under two issuers,
    resolves to nobody. One query for the usual image (its id is a current patient's).
    """
    if not patient_id:
        return None
    holders, retired = _RENAMED_LOOKUPS[bool(issuer)]
    params = {"pid": patient_id, "issuer": issuer}
    rows = all_rows(holders, conn, params)
    if any(row.status != "MERGED" for row in rows):
        return None
    if rows:  # merged-away patients only: an A40 retired the id
        if len(rows) != 1:
            return None
        survivor = _survivor(conn, int(rows[0].id))
        return survivor if survivor != int(rows[0].id) else None
    merges = all_rows(retired, conn, params)  # an A47 changed it (the old id is on no patient any more)
    if not merges or len({row.prior_issuer for row in merges}) != 1:
        return None
    return _survivor(conn, int(merges[0].survivor_pk))


def _insert(conn: Connection) -> Any:
    """The dialect's INSERT, so ``on_conflict_do_nothing`` is available (SQLite, PostgreSQL)."""
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _order_for(conn: Connection, ref: StudyRef) -> Any:
    o = orders.c
    stmt = select(o.id, o.patient_pk, o.accession_number).order_by(o.id).limit(1)
    row = conn.execute(stmt.where(o.study_instance_uid == ref.study_instance_uid)).first()
    if row is None and ref.accession_number:
        row = conn.execute(stmt.where(o.accession_number == ref.accession_number)).first()
    return row


def upsert_study(conn: Connection, ref: StudyRef, patient_pk: int | None, now: datetime) -> int:
    """The pk of the study ``ref`` names, created if new; links it to its order when one matches.

    The order's patient wins over ``patient_pk``; a known study keeps its patient
    unless it had none.
    """
    order = _order_for(conn, ref)
    if order is not None:
        patient_pk = int(order.patient_pk)
    accession = order.accession_number if order is not None else ref.accession_number
    conn.execute(
        _insert(conn)(studies)
        .values(
            study_instance_uid=ref.study_instance_uid,
            patient_pk=patient_pk,
            order_pk=order.id if order is not None else None,
            accession_number=accession,
            first_seen_at=now,
            last_seen_at=now,
        )
        .on_conflict_do_nothing(index_elements=["study_instance_uid"])
    )
    row = conn.execute(
        select(studies.c.id, studies.c.patient_pk, studies.c.order_pk).where(
            studies.c.study_instance_uid == ref.study_instance_uid
        )
    ).one()
    fill: dict[str, Any] = {"last_seen_at": now}
    if row.patient_pk is None and patient_pk is not None:
        fill["patient_pk"] = patient_pk
    if row.order_pk is None and order is not None:
        fill |= {"order_pk": order.id, "accession_number": accession}
    conn.execute(update(studies).where(studies.c.id == row.id).values(**fill))
    return int(row.id)


def upsert_series(
    conn: Connection, study_pk: int, item: PerformedSeries, mpps_pk: int | None, now: datetime
) -> int:
    """The pk of the series, created under ``study_pk`` if new; counts only ever grow."""
    conn.execute(
        _insert(conn)(series)
        .values(
            study_pk=study_pk,
            series_instance_uid=item.series_instance_uid,
            modality=item.modality,
            series_description=item.series_description,
            number_of_instances=item.number_of_instances,
            mpps_pk=mpps_pk,
            first_seen_at=now,
            last_seen_at=now,
        )
        .on_conflict_do_nothing(index_elements=["series_instance_uid"])
    )
    s = series.c
    row = conn.execute(
        select(s.id, s.number_of_instances, s.modality, s.series_description).where(
            s.series_instance_uid == item.series_instance_uid
        )
    ).one()
    values: dict[str, Any] = {
        "last_seen_at": now,
        "number_of_instances": max(int(row.number_of_instances), item.number_of_instances),
        "modality": row.modality or item.modality,
        "series_description": item.series_description or row.series_description,
    }
    if mpps_pk is not None:
        values["mpps_pk"] = mpps_pk
    conn.execute(update(series).where(s.id == row.id).values(**values))
    return int(row.id)


def _recount(conn: Connection, study_pks: Iterable[int]) -> None:
    """Number of series and instances and ModalitiesInStudy from the study's series rows."""
    s = series.c
    for pk in set(study_pks):
        counts = conn.execute(
            select(func.count(s.id), func.coalesce(func.sum(s.number_of_instances), 0)).where(
                s.study_pk == pk
            )
        ).one()
        modalities = sorted(
            {str(m) for (m,) in conn.execute(select(s.modality).where(s.study_pk == pk)) if m}
        )
        conn.execute(
            update(studies)
            .where(studies.c.id == pk)
            .values(
                number_of_series=int(counts[0]),
                number_of_instances=int(counts[1]),
                modalities_in_study="\\".join(modalities)[:128],
            )
        )


def recount(conn: Connection, study_pks: Iterable[int]) -> None:
    """Refresh the studies' series and instance counts and ModalitiesInStudy from their series rows."""
    _recount(conn, study_pks)


def record_performed(
    conn: Connection, mpps_pk: int, ds: Dataset, patient_pk: int | None, now: datetime
) -> list[int]:
    """Index the studies an MPPS names and its performed series; return the study pks.

    ``ds`` is the instance's full attribute set (N-CREATE, or as updated by N-SET).
    In the group case (several studies in one MPPS) the performed series are
    filed under the first study the instance names (PS3.4 F.7.2.1.1 leaves the
    choice to the modality; the images say which one they used).
    """
    if patient_pk is None:
        patient_pk = resolve_dicom_patient(
            conn, _text(ds, "PatientID"), _text(ds, "IssuerOfPatientID")
        )
    study_pks = [upsert_study(conn, ref, patient_pk, now) for ref in study_refs(ds)]
    if study_pks:
        for item in performed_series(ds):
            upsert_series(conn, study_pks[0], item, mpps_pk, now)
        _recount(conn, study_pks)
    return study_pks


def move_studies(conn: Connection, prior_pk: int, survivor_pk: int) -> int:
    """A40: the prior patient's studies become the survivor's; return how many moved."""
    result = conn.execute(
        update(studies).where(studies.c.patient_pk == prior_pk).values(patient_pk=survivor_pk)
    )
    return int(result.rowcount or 0)
