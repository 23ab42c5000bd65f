"""The instance level of the study index: what a C-STORE adds, in the caller's transaction.

:func:`index_instance` files one stored instance under its study and series
(created or completed through :mod:`engine.domain.studies`) and applies the
duplicate policy to a SOP Instance UID seen before: the same content changes
nothing; different content replaces the indexed version and keeps the old one
as history (``replace``) or is refused (``reject``). A study whose Study
Instance UID or accession number is an order's is linked to that order
(:func:`~engine.domain.studies.upsert_study`); otherwise its ``order_pk`` stays
empty: an *unscheduled* study, reconciled later. Patient id and name are
recorded as received.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import Connection, bindparam, func, insert, select, update

from engine.archive.copy_tables import replaced_version_copies
from engine.domain.instance_tables import instance_versions, instances, quarantined_instances
from engine.domain.studies import PerformedSeries, StudyRef, recount, resolve_dicom_patient, upsert_series, upsert_study
from engine.domain.tables import orders, series, studies
from engine.errors import RadbridgeError
from engine.store.fast import FastInsert, FastStatement, first_row

__all__ = [
    "PROCESSING_FAILURE",
    "DuplicatePolicy",
    "IndexOutcome",
    "Indexed",
    "InstanceAttributes",
    "QuarantineRecord",
    "SeriesConflict",
    "SeriesFiling",
    "StoredFile",
    "StudyLink",
    "index_instance",
    "index_instance_row",
    "is_valid_uid",
    "record_quarantine",
    "series_filed_elsewhere",
]

DuplicatePolicy = Literal["replace", "reject"]

#: PS3.5 9.1: digits and dots, components without leading zeros, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    """True for a UID that PS3.5 9.1 allows (and that is therefore safe in a file name)."""
    return 0 < len(value) <= 64 and _UID.match(value) is not None


class IndexOutcome(Enum):
    """What :func:`index_instance` did."""

    STORED = "stored"  # a new SOP Instance UID
    UNCHANGED = "unchanged"  # same UID, same content: nothing changed
    REPLACED = "replaced"  # same UID, new content: indexed, the old version kept as history
    REJECTED = "rejected"  # same UID, new content, policy ``reject``: nothing changed


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    """A header value as text, or "" when absent or undecodable (never raises: values are as sent)."""
    raw = _plain(ds, keyword)
    if raw is not None:
        return raw.decode("ascii").strip()[:limit]
    try:
        value = ds.get(keyword, "")
    except Exception:  # a bad value in one attribute must not refuse the instance
        return ""
    return str(value or "").strip()[:limit]


def _number(ds: Dataset, keyword: str) -> int | None:
    raw = _plain(ds, keyword)
    if raw is not None and _DIGITS.fullmatch(raw.strip()):
        return int(raw) or None  # as below: pydicom's IS 0 is falsy, read as "" (so None) since the start
    try:
        return int(str(ds.get(keyword, "") or "").strip())
    except Exception:  # IS values arrive malformed ("1A"); the index leaves them empty
        return None


#: The indexed attributes: their tag and VR (PS3.6), and whether the header's character set applies.
_INDEXED = {keyword: (Tag(keyword), dictionary_VR(Tag(keyword))) for keyword in (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "IssuerOfPatientID",
    "PatientName", "AccessionNumber", "StudyDate", "StudyTime", "StudyDescription", "StudyID", "Modality",
    "SeriesNumber", "SeriesDate", "SeriesDescription", "InstanceNumber")}  # fmt: skip
_CHARSET_VRS = frozenset({"SH", "LO", "PN"})
_CHARSET = Tag("SpecificCharacterSet")
#: Character sets in which printable ASCII bytes decode to themselves (pydicom's encodings).
_ASCII_CHARSETS = frozenset({b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192"})
#: One value of printable ASCII without a backslash (so a single value), trailing NUL or space padding aside.
_PRINTABLE = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")
_DIGITS = re.compile(rb"[+-]?[0-9]+")


def _plain(ds: Dataset, keyword: str) -> bytes | None:
    """The value of an indexed attribute still as received (not decoded yet), when it is one plain ASCII
    value in its dictionary VR: the bytes without their padding, which are the text pydicom would decode
    (``str(value).strip()`` of the decoded value is ``bytes.decode().strip()``). None when pydicom has
    to decode it (absent, decoded already, several values, another VR, non-ASCII, a character set)."""
    tag, vr = _INDEXED[keyword]
    elem = ds.get_item(tag)
    if not isinstance(elem, RawDataElement) or (elem.VR is not None and vr != elem.VR) or elem.value is None:
        return None
    value = elem.value.rstrip(b"\0 ")
    if not _PRINTABLE.fullmatch(value) or (vr == "PN" and b"=" in value):  # PN groups: pydicom drops empty ones
        return None
    if vr in _CHARSET_VRS:
        charset = ds.get_item(_CHARSET)
        if charset is not None and (not isinstance(charset, RawDataElement) or charset.value is None
                                    or charset.value.strip(b"\0 ") not in _ASCII_CHARSETS):
            return None
    return value


@dataclass(frozen=True, slots=True)
class InstanceAttributes:
    """What the index takes from one instance's header (PS3.3 C.7.1-C.7.3, C.12.1)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    study_id: str = ""
    modality: str = ""
    series_number: int | None = None
    series_date: str = ""
    series_description: str = ""
    instance_number: int | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> InstanceAttributes:
        """Read tolerantly: a missing or malformed attribute becomes "" (or None for numbers)."""
        values: list[Any] = [_text(ds, keyword, limit) if limit else _number(ds, keyword)
                             for keyword, limit in FIELDS.values()]
        return cls(*values)

    def values_at(self, tags: Collection[int]) -> dict[str, Any]:
        """The fields read from the header elements ``tags`` (field name -> value)."""
        return {name: getattr(self, name) for name, (keyword, _) in FIELDS.items() if _INDEXED[keyword][0] in tags}


#: Each field of :class:`InstanceAttributes`, in order: the header attribute it is read from, and the length
#: its text is cut to (0: read as a number).
FIELDS: dict[str, tuple[str, int]] = {
    "sop_class_uid": ("SOPClassUID", 64), "sop_instance_uid": ("SOPInstanceUID", 65),
    "study_instance_uid": ("StudyInstanceUID", 65), "series_instance_uid": ("SeriesInstanceUID", 65),
    "patient_id": ("PatientID", 64), "issuer_of_patient_id": ("IssuerOfPatientID", 64),
    "patient_name": ("PatientName", 324), "accession_number": ("AccessionNumber", 16),
    "study_date": ("StudyDate", 8), "study_time": ("StudyTime", 16), "study_description": ("StudyDescription", 64),
    "study_id": ("StudyID", 16), "modality": ("Modality", 16), "series_number": ("SeriesNumber", 0),
    "series_date": ("SeriesDate", 8), "series_description": ("SeriesDescription", 64),
    "instance_number": ("InstanceNumber", 0),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class StudyLink:
    """A study's link to its order as the index found it: order, step, patient, the study's accession
    and its order's (None without an order)."""

    order_pk: int | None
    step_pk: int | None
    patient_pk: int | None
    accession_number: str
    order_accession: str | None


@dataclass(frozen=True, slots=True)
class Indexed:
    """What :func:`index_instance_row` did, with what the steps after it in the same transaction
    (reconciliation, copies, forwarding) need, so that none of them reads the rows again.

    ``instance_pk``, ``study_pk`` and ``version`` are set when something was indexed
    (:attr:`changed`). ``link`` is the study's order link when the instance joined a known
    series, which leaves the study's link as it was; None when the study was created or
    completed from this header (:func:`~engine.domain.studies.upsert_study`), which may
    have linked it to an order by Study Instance UID or accession, and then
    ``linkable`` says whether it had no order before (absent or unlinked).
    """

    outcome: IndexOutcome
    instance_pk: int = 0
    study_pk: int = 0
    version: int = 0
    link: StudyLink | None = None
    linkable: bool = False

    @property
    def changed(self) -> bool:
        """True when a new instance or a new version was indexed."""
        return self.outcome in (IndexOutcome.STORED, IndexOutcome.REPLACED)


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file durably in place in a storage location, about to be indexed."""

    location: str
    path: str
    size: int
    sha256: str
    transfer_syntax_uid: str
    received_from_ae: str
    received_at: datetime
    received_sha256: str = ""  # the dataset as received, when a coerced one is stored ("": sha256)
    #: the Study Instance UID as received, when the coercion changed it ("": stored under the one received)
    received_study_instance_uid: str = ""

    @property
    def identity(self) -> str:
        """The hash a resend is recognised by: the dataset as received."""
        return self.received_sha256 or self.sha256


#: PS3.7 C.5.2 "Processing failure": the status of a request the storage service failed on (not the data
#: set's fault), kept in quarantine like a refusal (channels.dicom.storage).
PROCESSING_FAILURE = 0xC211


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """A refused dataset kept for inspection: what the command said and why it was refused."""

    received_at: datetime
    received_from_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    status: int
    reason: str
    location: str
    path: str
    size: int
    sha256: str


def record_quarantine(conn: Connection, record: QuarantineRecord) -> int:
    """Index a quarantined file; return its row id."""
    values = {k: getattr(record, k) for k in QuarantineRecord.__slots__}
    values["sop_instance_uid"] = record.sop_instance_uid[:64]
    values["sop_class_uid"] = record.sop_class_uid[:64]
    result = conn.execute(insert(quarantined_instances).values(**values))
    return int(result.inserted_primary_key[0])  # type: ignore[index]


# -- The receive path's statements, run on the driver's cursor (engine.store.fast): through SQLAlchemy Core
# -- the five statements of an instance cost ~2 ms of Python on the writer thread, more than the commit.

_EXISTING = FastStatement(
    select(instances.c.id, instances.c.sha256, instances.c.received_sha256, instances.c.versions,
           instances.c.study_pk, instances.c.series_pk)
    .where(instances.c.sop_instance_uid == bindparam("uid"))
)
_KNOWN_SERIES = FastStatement(
    select(series.c.study_pk, series.c.id, studies.c.order_pk, studies.c.step_pk, studies.c.patient_pk,
           studies.c.accession_number, orders.c.accession_number.label("order_accession"))
    .join(studies, studies.c.id == series.c.study_pk).outerjoin(orders, orders.c.id == studies.c.order_pk)
    .where(series.c.series_instance_uid == bindparam("series_uid"),
           studies.c.study_instance_uid == bindparam("study_uid"),
           select(instances.c.id).where(instances.c.series_pk == series.c.id).exists())
)  # fmt: skip
_SERIES_FILING = FastStatement(
    select(series.c.id, studies.c.study_instance_uid, series.c.received_study_instance_uid)
    .join(studies, studies.c.id == series.c.study_pk)
    .where(series.c.series_instance_uid == bindparam("series_uid"))
)
_OTHER_INSTANCES = FastStatement(
    select(instances.c.id).where(instances.c.series_pk == bindparam("series_pk"),
                                 instances.c.sop_instance_uid != bindparam("sop_uid")).limit(1)
)
_INSERT = FastInsert(instances)
_COUNT_STUDY = FastStatement(
    update(studies).where(studies.c.id == bindparam("pk")).values(
        number_of_instances=select(func.coalesce(func.sum(series.c.number_of_instances), 0))
        .where(series.c.study_pk == bindparam("pk")).scalar_subquery(),
        last_seen_at=bindparam("now"),
    )
)
#: Per dialect: SQLite's two-argument ``max``, PostgreSQL's ``greatest`` (:func:`_greater`).
_COUNT_SERIES: dict[str, FastStatement] = {}


class SeriesConflict(RadbridgeError):
    """An image whose Series Instance UID is already filed, with other images, under another study."""


@dataclass(frozen=True, slots=True)
class SeriesFiling:
    """Where a series is filed: its study's Study Instance UID, and the one its first image arrived with
    when a coercion changed it ("" when it did not)."""

    study_instance_uid: str
    received_study_instance_uid: str


def series_filed_elsewhere(conn: Connection, series_instance_uid: str, study_instance_uid: str,
                           sop_instance_uid: str) -> SeriesFiling | None:
    """Where the series is filed when that is under another study than ``study_instance_uid`` and it holds
    images other than ``sop_instance_uid``; else None (a new series, one of this study, or one that only an
    MPPS announced or that holds only this instance, which the image takes along to its study)."""
    row = first_row(_SERIES_FILING, conn, {"series_uid": series_instance_uid})
    if row is None or row.study_instance_uid == study_instance_uid:
        return None
    if first_row(_OTHER_INSTANCES, conn, {"series_pk": int(row.id), "sop_uid": sop_instance_uid}) is None:
        return None
    return SeriesFiling(str(row.study_instance_uid), str(row.received_study_instance_uid or ""))


def index_instance(conn: Connection, attrs: InstanceAttributes, stored: StoredFile,
                   policy: DuplicatePolicy) -> IndexOutcome:
    """Index ``stored`` (already durable) as ``attrs``; the caller commits.

    UNCHANGED and REJECTED change nothing: the caller removes ``stored`` if it created it.
    """
    return index_instance_row(conn, attrs, stored, policy).outcome


def index_instance_row(conn: Connection, attrs: InstanceAttributes, stored: StoredFile,
                       policy: DuplicatePolicy) -> Indexed:
    """:func:`index_instance`, returning the rows it wrote (:class:`Indexed`) for the steps after it.

    An instance of a known series costs five statements: the duplicate check, the series
    lookup (which also reads the study's order link), the insert and the two counts.
    """
    existing = first_row(_EXISTING, conn, {"uid": attrs.sop_instance_uid})
    if existing is not None and (existing.received_sha256 or existing.sha256) == stored.identity:
        return Indexed(IndexOutcome.UNCHANGED)
    if existing is not None and policy == "reject":
        return Indexed(IndexOutcome.REJECTED)
    now = stored.received_at
    study_pk, series_pk, link, linkable = _locate(conn, attrs, now, stored.received_study_instance_uid)
    row = _instance_values(attrs, stored, study_pk, series_pk)
    if existing is None:
        instance_pk, version = _INSERT.execute(conn, {**row, "versions": 1}), 1
    else:
        instance_pk, version = int(existing.id), int(existing.versions) + 1
        _keep_version(conn, conn.execute(select(instances).where(instances.c.id == existing.id)).one(), now)
        conn.execute(update(instances).where(instances.c.id == existing.id).values(**row, versions=version))
    before = (int(existing.study_pk), int(existing.series_pk)) if existing is not None else None
    moved = before is not None and before[1] != series_pk
    _count_series(conn, series_pk, now)
    if before is not None and moved:
        _count_left_series(conn, before[1], now)
    if link is not None and not moved:
        _count_study(conn, study_pk, now)  # same series set, same modalities: only the count changes
    else:
        recount(conn, {study_pk} | ({before[0]} if before is not None and moved else set()))
    outcome = IndexOutcome.STORED if existing is None else IndexOutcome.REPLACED
    return Indexed(outcome, instance_pk, study_pk, version, link, linkable)


def _locate(conn: Connection, attrs: InstanceAttributes, now: datetime,
            received_study_uid: str = "") -> tuple[int, int, StudyLink | None, bool]:
    """(study pk, series pk, link, linkable) of :class:`Indexed`. The common case, every instance after a
    series' first, is a known series whose study and series rows need no upsert and no filling (a series
    only MPPS announced still takes the full path, which fills its attributes)."""
    params = {"series_uid": attrs.series_instance_uid, "study_uid": attrs.study_instance_uid}
    known = first_row(_KNOWN_SERIES, conn, params)
    if known is not None:
        link = StudyLink(known.order_pk, known.step_pk, known.patient_pk, known.accession_number,
                         known.order_accession)
        return int(known.study_pk), int(known.id), link, False
    linkable = _unlinked(conn, attrs.study_instance_uid)
    return (*_file_under(conn, attrs, now, received_study_uid), None, linkable)


def _unlinked(conn: Connection, study_instance_uid: str) -> bool:
    """True when the study is not stored yet or has no order (before :func:`_file_under` may link it)."""
    order_pk = conn.execute(select(studies.c.order_pk).where(studies.c.study_instance_uid == study_instance_uid))
    row = order_pk.first()
    return row is None or row.order_pk is None


def _instance_values(attrs: InstanceAttributes, stored: StoredFile, study_pk: int, series_pk: int) -> dict[str, Any]:
    return {
        "study_pk": study_pk, "series_pk": series_pk, "sop_instance_uid": attrs.sop_instance_uid,
        "sop_class_uid": attrs.sop_class_uid, "instance_number": attrs.instance_number,
        "transfer_syntax_uid": stored.transfer_syntax_uid, "size": stored.size, "sha256": stored.sha256,
        "location": stored.location, "path": stored.path, "received_from_ae": stored.received_from_ae[:16],
        "received_at": stored.received_at, "received_sha256": stored.received_sha256,
    }  # fmt: skip


def _keep_version(conn: Connection, old: Any, now: datetime) -> None:
    conn.execute(insert(instance_versions).values(
        instance_pk=old.id, sha256=old.sha256, size=old.size, location=old.location, path=old.path,
        received_from_ae=old.received_from_ae, received_at=old.received_at, replaced_at=now,
        **replaced_version_copies(conn, int(old.id)),  # its copies stay history (checked by fixity)
    ))


def _file_under(conn: Connection, attrs: InstanceAttributes, now: datetime,
                received_study_uid: str = "") -> tuple[int, int]:
    """The (study pk, series pk) of the instance, created or completed from its header.

    A series filed under another study with other images is a :class:`SeriesConflict` (the receive path
    refuses such an image before it is stored: :func:`series_filed_elsewhere`; this is the last guard,
    against one that raced it). One under another study without other images (only an MPPS announced it,
    or its only image is this instance, resent under a corrected Study Instance UID) moves to this study.
    """
    if series_filed_elsewhere(conn, attrs.series_instance_uid, attrs.study_instance_uid,
                              attrs.sop_instance_uid) is not None:
        raise SeriesConflict("the Series Instance UID is filed under another study")
    patient_pk = resolve_dicom_patient(conn, attrs.patient_id, attrs.issuer_of_patient_id)
    study_pk = upsert_study(conn, StudyRef(attrs.study_instance_uid, attrs.accession_number), patient_pk, now)
    _fill_empty(conn, studies, study_pk, {
        "patient_id": attrs.patient_id, "issuer_of_patient_id": attrs.issuer_of_patient_id,
        "patient_name": attrs.patient_name, "study_date": attrs.study_date, "study_time": attrs.study_time,
        "study_description": attrs.study_description, "study_id": attrs.study_id,
        "accession_number": attrs.accession_number,
    })  # fmt: skip
    item = PerformedSeries(attrs.series_instance_uid, attrs.modality, attrs.series_description)
    series_pk = upsert_series(conn, study_pk, item, None, now)
    _fill_empty(conn, series, series_pk, {"series_number": attrs.series_number, "series_date": attrs.series_date,
                                          "received_study_instance_uid": received_study_uid[:64]})
    left = conn.execute(select(series.c.study_pk).where(series.c.id == series_pk)).scalar_one()
    if int(left) != study_pk:  # filed elsewhere without other images: the series comes along
        conn.execute(update(series).where(series.c.id == series_pk).values(study_pk=study_pk))
        recount(conn, {int(left)})
    return study_pk, series_pk


def _fill_empty(conn: Connection, table: Any, pk: int, values: dict[str, Any]) -> None:
    """Set the columns that are still empty (the first instance's values win; later ones never erase)."""
    row = conn.execute(select(*(table.c[k] for k in values)).where(table.c.id == pk)).one()
    fill = {k: v for k, v in values.items() if v not in ("", None) and row._mapping[k] in ("", None)}
    if fill:
        conn.execute(update(table).where(table.c.id == pk).values(**fill))


def _greater(conn: Connection, a: Any, b: Any) -> Any:
    """The larger of two SQL values (SQLite's two-argument ``max``, PostgreSQL's ``greatest``)."""
    return func.max(a, b) if conn.dialect.name == "sqlite" else func.greatest(a, b)


def _count_series(conn: Connection, pk: int, now: datetime) -> None:
    """A series counts at least its stored instances (MPPS may have announced more)."""
    statement = _COUNT_SERIES.get(conn.dialect.name)
    if statement is None:
        stored = select(func.count()).where(instances.c.series_pk == bindparam("pk")).scalar_subquery()
        statement = _COUNT_SERIES[conn.dialect.name] = FastStatement(
            update(series).where(series.c.id == bindparam("pk")).values(
                number_of_instances=_greater(conn, series.c.number_of_instances, stored),
                last_seen_at=bindparam("now"),
            )
        )
    statement.execute(conn, {"pk": pk, "now": now})


def _count_left_series(conn: Connection, pk: int, now: datetime) -> None:
    """A series an instance left (resent under another series): one no MPPS announced counts its stored
    instances; one an MPPS announced keeps at least what it counted (its column holds the larger of both)."""
    stored = select(func.count()).where(instances.c.series_pk == pk).scalar_subquery()
    conn.execute(update(series).where(series.c.id == pk, series.c.mpps_pk.is_(None)).values(
        number_of_instances=stored, last_seen_at=now))
    _count_series(conn, pk, now)


def _count_study(conn: Connection, pk: int, now: datetime) -> None:
    """The study's instance count from its series rows."""
    _COUNT_STUDY.execute(conn, {"pk": pk, "now": now})
