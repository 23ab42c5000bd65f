"""``radbridge studies list|show|link``: the study index (C-STORE and MPPS), read with an audit event.

A listing shows patient ids and names as received, so every read is recorded
(:mod:`engine.audit`) in the transaction that reads: ``study.list`` (indexed by
patient id or accession when the query names one) and ``study.show`` (by Study
Instance UID).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Select, func, or_, select

from engine.audit import Actor, record
from engine.domain.instance_tables import instance_versions, instances
from engine.domain.tables import patients, series, studies

if TYPE_CHECKING:
    from engine.config.models import EngineConfig
    from engine.store.database import Database

__all__ = ["StudyFilter", "add_subcommands", "audited_studies", "audited_study", "link_to_accession", "list_studies",
           "study_detail"]

#: A study known only from MPPS has no header values yet: its patient's are shown (and matched) instead.
_PATIENT_ID = func.coalesce(func.nullif(studies.c.patient_id, ""), patients.c.patient_id, "").label("patient_id")
_PATIENT_NAME = func.coalesce(func.nullif(studies.c.patient_name, ""), patients.c.patient_name, "").label(
    "patient_name")
_WITH_PATIENT = studies.outerjoin(patients, patients.c.id == studies.c.patient_pk)
_STUDY_COLUMNS = (
    studies.c.study_instance_uid, _PATIENT_ID, _PATIENT_NAME, studies.c.accession_number,
    studies.c.study_date, studies.c.study_description, studies.c.modalities_in_study, studies.c.number_of_series,
    studies.c.number_of_instances, studies.c.order_pk, studies.c.first_seen_at, studies.c.last_seen_at,
)
_SERIES_COLUMNS = (
    series.c.id, series.c.series_instance_uid, series.c.series_number, series.c.modality,
    series.c.series_description, series.c.series_date, series.c.number_of_instances,
)
_INSTANCE_COLUMNS = (
    instances.c.series_pk, instances.c.sop_instance_uid, instances.c.sop_class_uid, instances.c.instance_number,
    instances.c.transfer_syntax_uid, instances.c.size, instances.c.sha256, instances.c.location, instances.c.path,
    instances.c.received_from_ae, instances.c.received_at, instances.c.versions,
)


@dataclass(frozen=True, slots=True)
class StudyFilter:
    """Criteria for ``studies list``; None means any."""

    patient_id: str | None = None
    accession_number: str | None = None
    unscheduled: bool = False
    limit: int = 100


def _jsonable(row: Any) -> dict[str, Any]:
    out = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row._mapping.items()}
    if "order_pk" in out:
        out["scheduled"] = out.pop("order_pk") is not None  # unscheduled: no order matched yet
    return out


def _query(f: StudyFilter) -> Select[Any]:
    q = select(*_STUDY_COLUMNS).select_from(_WITH_PATIENT).order_by(
        studies.c.last_seen_at.desc(), studies.c.id.desc()).limit(f.limit)
    if f.patient_id is not None:
        q = q.where(or_(studies.c.patient_id == f.patient_id, patients.c.patient_id == f.patient_id))
    if f.accession_number is not None:
        q = q.where(studies.c.accession_number == f.accession_number)
    if f.unscheduled:
        q = q.where(studies.c.order_pk.is_(None))
    return q


def list_studies(conn: Connection, f: StudyFilter) -> list[dict[str, Any]]:
    """Most recently seen first."""
    return [_jsonable(r) for r in conn.execute(_query(f))]


def study_detail(conn: Connection, study_instance_uid: str) -> dict[str, Any] | None:
    """The study with its series, each with its instances (file, checksum, sender); None if unknown."""
    row = conn.execute(select(studies.c.id, *_STUDY_COLUMNS).select_from(_WITH_PATIENT).where(
        studies.c.study_instance_uid == study_instance_uid)).first()
    if row is None:
        return None
    detail = _jsonable(row)
    pk = detail.pop("id")
    found = conn.execute(select(*_INSTANCE_COLUMNS).where(instances.c.study_pk == pk)
                         .order_by(instances.c.instance_number, instances.c.id)).all()
    by_series: dict[int, list[dict[str, Any]]] = {}
    for inst in found:
        by_series.setdefault(int(inst.series_pk), []).append(
            {k: v for k, v in _jsonable(inst).items() if k != "series_pk"})
    detail["series"] = []
    for s in conn.execute(select(*_SERIES_COLUMNS).where(series.c.study_pk == pk).order_by(series.c.series_number)):
        item = _jsonable(s)
        item["instances"] = by_series.get(int(item.pop("id")), [])
        detail["series"].append(item)
    detail["replaced_versions"] = len(conn.execute(select(instance_versions.c.id).join(
        instances, instances.c.id == instance_versions.c.instance_pk).where(instances.c.study_pk == pk)).all())
    return detail


def audited_studies(db: Database, f: StudyFilter, actor: Actor | None = None) -> list[dict[str, Any]]:
    """:func:`list_studies`, recorded as ``study.list`` with the query and the studies it returned."""
    return db.writer.call(partial(_list_and_record, f=f, actor=actor))


def _list_and_record(conn: Connection, f: StudyFilter, actor: Actor | None) -> list[dict[str, Any]]:
    rows = list_studies(conn, f)
    key = ("patient", f.patient_id) if f.patient_id is not None else (
        ("accession", f.accession_number) if f.accession_number is not None else ("query", ""))
    record(conn, "study.list", key[0], key[1] or "",
           {"query": asdict(f), "study_instance_uids": [r["study_instance_uid"] for r in rows]}, actor)
    return rows


def audited_study(db: Database, study_instance_uid: str, actor: Actor | None = None) -> dict[str, Any] | None:
    """:func:`study_detail`, recorded as ``study.show`` when the study exists."""
    return db.writer.call(partial(_detail_and_record, uid=study_instance_uid, actor=actor))


def _detail_and_record(conn: Connection, uid: str, actor: Actor | None) -> dict[str, Any] | None:
    detail = study_detail(conn, uid)
    if detail is not None:
        record(conn, "study.show", "study", uid, {"study_instance_uids": [uid]}, actor)
    return detail


_LIST_TEXT = ("study_instance_uid", "patient_id", "accession_number", "study_date", "modalities_in_study",
              "number_of_series", "number_of_instances", "scheduled", "last_seen_at")


def _list_text(rows: list[dict[str, Any]]) -> str:
    lines = ["\t".join(_LIST_TEXT)]
    lines += ["\t".join(str(r.get(c, "")) for c in _LIST_TEXT) for r in rows]
    return "\n".join(lines)


def _detail_text(d: dict[str, Any]) -> str:
    head = [f"{k}: {v}" for k, v in d.items() if k != "series"]
    for s in d["series"]:
        head.append(f"series {s['series_instance_uid']} #{s['series_number']} {s['modality']} "
                    f"{s['number_of_instances']} instance(s)")
        head += [f"  {i['sop_instance_uid']} #{i['instance_number']} {i['size']} bytes sha256={i['sha256'][:16]} "
                 f"{i['location']}:{i['path']} from {i['received_from_ae']} at {i['received_at']}"
                 for i in s["instances"]]
    return "\n".join(head)


def _print(data: Any, as_json: bool, text: Any) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text(data))


def cmd_list(args: argparse.Namespace, db: Database) -> int:
    """``studies list``."""
    f = StudyFilter(args.patient_id, args.accession, args.unscheduled, args.limit)
    _print(audited_studies(db, f), args.json, _list_text)
    return 0


def cmd_show(args: argparse.Namespace, db: Database) -> int:
    """``studies show STUDY_UID``; 1 if the study is unknown."""
    detail = audited_study(db, args.study_instance_uid)
    if detail is None:
        print(f"no study {args.study_instance_uid}", file=sys.stderr)
        return 1
    _print(detail, args.json, _detail_text)
    return 0


def add_subcommands(sub: Any, database: Any) -> None:
    """Register ``studies list|show``; ``database(args)`` opens the configured database."""
    studies_cmd = sub.add_parser("studies", help="the study index: stored images (audited)").add_subparsers(
        dest="studies_command", required=True)
    lst = studies_cmd.add_parser("list", help="studies, most recently seen first (audited)")
    lst.add_argument("--patient-id", help="only studies of this patient id (as received)")
    lst.add_argument("--accession", help="only studies with this accession number")
    lst.add_argument("--unscheduled", action="store_true", help="only studies no order matched")
    lst.add_argument("--limit", type=int, default=100, help="at most this many studies (default 100)")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(fn=lambda args: cmd_list(args, database(args)))
    show = studies_cmd.add_parser("show", help="one study with its series and instances (audited)")
    show.add_argument("study_instance_uid", metavar="STUDY_UID", help="the Study Instance UID")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(fn=lambda args: cmd_show(args, database(args)))
    from engine.cli.export import add_export  # studies export (engine.archive)

    add_export(studies_cmd, database)
    from engine.cli.main import _config  # the engine configuration (archive location, mapping) for ``link``

    add_link_subcommand(studies_cmd, database, lambda args: _config(args).engine)


def link_to_accession(db: Database, config: EngineConfig, study_instance_uid: str, accession: str,
                      actor: Actor | None = None) -> int:
    """``studies link``: reconcile a stored study with the order of ``accession`` (audited as ``study.link``).

    Returns how many instances were coerced. Raises LookupError when the study or the order is unknown.
    """
    from engine.archive.rewriting import RewriteIO
    from engine.domain.late_reconcile import Pace, match_for_order, reconcile_study
    from engine.domain.reconciler import Reconciler
    from engine.domain.reforward import CorrectionPolicy
    from engine.domain.tables import orders

    def find(conn: Connection) -> tuple[Any, Any]:
        study = conn.execute(select(studies.c.id).where(studies.c.study_instance_uid == study_instance_uid)).first()
        order = conn.execute(select(orders.c.id).where(orders.c.accession_number == accession)
                             .order_by(orders.c.id.desc())).first()
        match = match_for_order(conn, int(order.id), "operator", any_status=True) if order is not None else None
        return study, match

    study, match = db.read(find)
    if study is None:
        raise LookupError(f"no study {study_instance_uid}")
    if match is None:
        raise LookupError(f"no order with accession number {accession}")
    reconciler = Reconciler.from_config(db, config)
    if reconciler.mapping is None:
        raise LookupError(f"reconciliation is off or its mapping is missing ({config.reconcile.mapping})")
    count = reconcile_study(db, RewriteIO.from_config(config), reconciler, study_instance_uid,
                            match, datetime.now(UTC), CorrectionPolicy.from_config(config),
                            Pace(config.reconcile.correction_batch, config.reconcile.correction_yield_ratio))
    db.writer.call(lambda conn: record(conn, "study.link", "study", study_instance_uid,
                                       {"accession_number": accession, "order_pk": match.order_pk,
                                        "instances_coerced": count}, actor))
    return count


def cmd_link(args: argparse.Namespace, db: Database, config: EngineConfig) -> int:
    """``studies link STUDY_UID ACCESSION``; 1 if either is unknown."""
    try:
        count = link_to_accession(db, config, args.study_instance_uid, args.accession)
    except LookupError as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 1
    print(f"study {args.study_instance_uid} linked to accession {args.accession}: {count} instance(s) coerced")
    return 0


def add_link_subcommand(studies_cmd: Any, database: Any, engine_config: Any) -> None:
    """Register ``studies link``; ``engine_config(args)`` loads the engine configuration."""
    link = studies_cmd.add_parser("link", help="reconcile an unscheduled study with an order (audited)")
    link.add_argument("study_instance_uid", metavar="STUDY_UID", help="the Study Instance UID")
    link.add_argument("accession", metavar="ACCESSION", help="the accession number of the order")
    link.set_defaults(fn=lambda args: cmd_link(args, database(args), engine_config(args)))
