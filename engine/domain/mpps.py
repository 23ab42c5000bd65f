"""Modality Performed Procedure Step (PS3.4 Annex F; IHE RAD-6/7) applied to the domain.

N-CREATE starts an instance IN PROGRESS (F.7.2.1) and marks the referenced
scheduled steps STARTED; N-SET (F.7.2.2) may change it to COMPLETED or
DISCONTINUED, after which it is final and further N-SETs fail with 0x0110.
What each request must carry and what an N-SET may change is checked against
PS3.4 Table F.7.2-1 (:mod:`engine.domain.mpps_iod`) before anything is stored.
Each status change enqueues exactly one status message for the RIS in the
same transaction (the change and its message commit together, once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from sqlalchemy import Connection, insert, select, update

from engine.domain.mpps_iod import Problem, n_create_problem, n_set_problem
from engine.domain.status_message import StatusHeader, StepSummary, build_status_message, order_status
from engine.domain.studies import record_performed, resolve_dicom_patient
from engine.domain.tables import mpps, mpps_series, mpps_steps, orders, patients, procedure_steps
from engine.errors import RadbridgeError
from engine.outbox.queue import enqueue

__all__ = [
    "DUPLICATE_INSTANCE",
    "INVALID_VALUE",
    "MISSING_ATTRIBUTE",
    "NO_LONGER_UPDATABLE",
    "NO_SUCH_INSTANCE",
    "PROCESSING_FAILURE",
    "MppsError",
    "MppsPolicy",
    "create_mpps",
    "set_mpps",
]

PROCESSING_FAILURE = 0x0110
DUPLICATE_INSTANCE = 0x0111
NO_SUCH_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
INVALID_VALUE = 0x0106

#: PerformedProcedureStepStatus → Scheduled Procedure Step Status (reference section 5).
STEP_STATUS: dict[str, str] = {
    "IN PROGRESS": "STARTED",
    "COMPLETED": "COMPLETED",
    "DISCONTINUED": "DISCONTINUED",
}
FINAL = frozenset({"COMPLETED", "DISCONTINUED"})


#: PS3.4 Table F.7.2-2: the Error ID of an N-SET on a COMPLETED or DISCONTINUED instance.
NO_LONGER_UPDATABLE = 0xA710


class MppsError(RadbridgeError):
    """An N-CREATE/N-SET refused with a DIMSE failure ``status`` (PS3.4 F.7.2).

    ``tags`` go to the response's Attribute Identifier List (0000,1005), ``error_id``
    to its Error ID (0000,0903); ``comment`` never carries patient values.
    """

    def __init__(self, status: int, comment: str, tags: tuple[int, ...] = (), error_id: int | None = None) -> None:
        super().__init__(f"0x{status:04X} {comment}")
        self.status = status
        self.comment = comment
        self.tags = tags
        self.error_id = error_id

    @classmethod
    def of(cls, problem: Problem) -> MppsError:
        """The error for a Table F.7.2-1 ``problem``."""
        return cls(problem.status, problem.comment, problem.tags)


@dataclass(frozen=True, slots=True)
class MppsPolicy:
    """``mpps:`` settings: where status messages go (empty destination: nowhere)."""

    destination: str = ""
    channel: str = "mpps"
    header: StatusHeader = field(default_factory=lambda: StatusHeader("RADBRIDGE", "", "", ""))
    #: Type 2 attributes must be present too (PS3.4 F.7.2.1.2); by default only Type 1 ones must.
    require_type2: bool = False


def _encode(ds: Dataset) -> bytes:
    """The dataset as Explicit VR Little Endian bytes (no preamble, no meta)."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def _decode(data: bytes) -> Dataset:
    return read_dataset(BytesIO(data), is_implicit_VR=False, is_little_endian=True)


def _status_of(ds: Dataset, default: str | None) -> str:
    value = str(ds.get("PerformedProcedureStepStatus", "") or "") or default
    if value is None:
        raise MppsError(MISSING_ATTRIBUTE, "PerformedProcedureStepStatus missing")
    if value not in STEP_STATUS:
        raise MppsError(INVALID_VALUE, f"PerformedProcedureStepStatus {value!r}")
    return value


def _steps_for(conn: Connection, item: Dataset) -> list[int]:
    """Steps referenced by one ScheduledStepAttributesSequence item (SPS ID, study, accession)."""
    s, o = procedure_steps.c, orders.c
    stmt = select(s.id).join(orders, s.order_pk == o.id)
    conds = [
        (s.sps_id, str(item.get("ScheduledProcedureStepID", "") or "")),
        (o.study_instance_uid, str(item.get("StudyInstanceUID", "") or "")),
        (o.accession_number, str(item.get("AccessionNumber", "") or "")),
    ]
    given = [(col, v) for col, v in conds if v]
    if not given:
        return []
    return [int(r[0]) for r in conn.execute(stmt.where(*[col == v for col, v in given]))]


def _record_series(conn: Connection, mpps_pk: int, ds: Dataset) -> None:
    for item in ds.get("PerformedSeriesSequence", None) or []:
        uid = str(item.get("SeriesInstanceUID", "") or "")
        if not uid:
            continue
        refs = [
            str(r.get("ReferencedSOPInstanceUID", ""))
            for r in item.get("ReferencedImageSequence", None) or []
        ]
        values = {
            "series_description": str(item.get("SeriesDescription", "") or "")[:64],
            "retrieve_ae_title": str(item.get("RetrieveAETitle", "") or "")[:16],
            "instance_count": len(refs),
            "sop_instance_uids": "\\".join(refs),
        }
        t = mpps_series.c
        done = conn.execute(
            update(mpps_series)
            .where(t.mpps_pk == mpps_pk, t.series_instance_uid == uid)
            .values(**values)
        )
        if not done.rowcount:
            conn.execute(
                insert(mpps_series).values(mpps_pk=mpps_pk, series_instance_uid=uid, **values)
            )


def _summaries(conn: Connection, step_pks: list[int]) -> list[StepSummary]:
    """The steps as the RIS knows them, each with its order's ORC-5 from all of the order's steps (after the
    transition: a step not referenced by this MPPS keeps the order IP until it ends)."""
    s, o, p = procedure_steps.c, orders.c, patients.c
    of_order: dict[int, list[str]] = {}
    of_orders = select(s.order_pk, s.status).where(s.order_pk.in_(select(s.order_pk).where(s.id.in_(step_pks))))
    for order_pk, step_status in conn.execute(of_orders):
        of_order.setdefault(int(order_pk), []).append(str(step_status))
    stmt = (
        select(s.order_pk, p.patient_id, p.issuer, p.patient_name, o.placer_order_number, o.filler_order_number,
               o.placer_order_namespace, o.filler_order_namespace, o.accession_number, o.requested_procedure_id,
               o.study_instance_uid, s.sps_id, s.modality,
               o.procedure_code_value.label("procedure_code"),
               o.requested_procedure_description.label("procedure_text"))
        .join(orders, s.order_pk == o.id).join(patients, o.patient_pk == p.id)
        .where(s.id.in_(step_pks)).order_by(s.id)
    )  # fmt: skip
    summaries = []
    for row in conn.execute(stmt):
        values = dict(row._mapping)
        statuses = of_order[int(values.pop("order_pk"))]
        summaries.append(StepSummary(**values, order_status=order_status(statuses)))
    return summaries


def _transition(
    conn: Connection, mpps_pk: int, status: str, policy: MppsPolicy, now: datetime
) -> None:
    """Apply a new PPS status to the referenced steps and enqueue the RIS message once."""
    step_pks = [
        int(r[0])
        for r in conn.execute(select(mpps_steps.c.step_pk).where(mpps_steps.c.mpps_pk == mpps_pk))
    ]
    if step_pks:
        conn.execute(
            update(procedure_steps).where(procedure_steps.c.id.in_(step_pks))
            .values(status=STEP_STATUS[status], updated_at=now)
        )  # fmt: skip
    if not policy.destination or not step_pks:
        return
    steps = _summaries(conn, step_pks)
    control_id = f"MPPS{mpps_pk}{status.replace(' ', '')[:2]}"
    payload = build_status_message(policy.header, steps, status, control_id, now)
    enqueue(conn, channel=policy.channel, destination=policy.destination, payload=payload,
            media_type="application/hl7-v2", ordering_key=steps[0].patient_id, now=now)  # fmt: skip


def create_mpps(
    conn: Connection, uid: str, ds: Dataset, calling_ae: str, policy: MppsPolicy, now: datetime
) -> Dataset:
    """N-CREATE: store the instance IN PROGRESS and start its steps; return the stored attributes."""
    if not uid:
        raise MppsError(MISSING_ATTRIBUTE, "Affected SOP Instance UID missing")
    problem = n_create_problem(ds, policy.require_type2)
    if problem is not None:
        raise MppsError.of(problem)
    if _status_of(ds, None) != "IN PROGRESS":
        raise MppsError(INVALID_VALUE, "N-CREATE must be IN PROGRESS")
    if conn.execute(select(mpps.c.id).where(mpps.c.sop_instance_uid == uid)).first():
        raise MppsError(DUPLICATE_INSTANCE, f"MPPS {uid} exists")
    step_pks: list[int] = []
    for item in ds.get("ScheduledStepAttributesSequence", None) or []:
        step_pks += [pk for pk in _steps_for(conn, item) if pk not in step_pks]
    patient_pk = _patient_of(conn, step_pks, ds)
    mpps_pk = conn.execute(insert(mpps).values(
        sop_instance_uid=uid, status="IN PROGRESS", patient_pk=patient_pk, modality=str(ds.get("Modality", "") or ""),
        performed_station_ae_title=str(ds.get("PerformedStationAETitle", "") or "")[:16],
        calling_ae_title=calling_ae[:16], attributes=_encode(ds), created_at=now, updated_at=now,
    )).inserted_primary_key[0]  # type: ignore[index]  # fmt: skip
    for pk in step_pks:
        conn.execute(insert(mpps_steps).values(mpps_pk=mpps_pk, step_pk=pk))
    _record_series(conn, int(mpps_pk), ds)
    record_performed(conn, int(mpps_pk), ds, patient_pk, now)
    _transition(conn, int(mpps_pk), "IN PROGRESS", policy, now)
    return ds


def _patient_of(conn: Connection, step_pks: list[int], ds: Dataset) -> int | None:
    """The referenced steps' patient; unscheduled: PatientID (+ issuer), merges followed."""
    if not step_pks:
        patient_id = str(ds.get("PatientID", "") or "")
        return resolve_dicom_patient(conn, patient_id, str(ds.get("IssuerOfPatientID", "") or ""))
    stmt = select(orders.c.patient_pk).join(
        procedure_steps, procedure_steps.c.order_pk == orders.c.id
    )
    row = conn.execute(stmt.where(procedure_steps.c.id == step_pks[0])).first()
    return int(row[0]) if row else None


def set_mpps(
    conn: Connection, uid: str, modification: Dataset, policy: MppsPolicy, now: datetime
) -> Dataset:
    """N-SET: update a non-final instance; a status change moves its steps and notifies the RIS."""
    row: Any = conn.execute(select(mpps).where(mpps.c.sop_instance_uid == uid)).first()
    if row is None:
        raise MppsError(NO_SUCH_INSTANCE, f"no MPPS {uid}")
    if row.status in FINAL:
        raise MppsError(
            PROCESSING_FAILURE, "Performed Procedure Step Object may no longer be updated",
            error_id=NO_LONGER_UPDATABLE,
        )  # fmt: skip
    problem = n_set_problem(modification, policy.require_type2)
    if problem is not None:
        raise MppsError.of(problem)
    new_status = _status_of(modification, row.status)
    stored = _decode(row.attributes)
    for elem in modification:
        stored[elem.tag] = elem
    conn.execute(
        update(mpps).where(mpps.c.id == row.id)
        .values(status=new_status, attributes=_encode(stored), updated_at=now)
    )  # fmt: skip
    _record_series(conn, int(row.id), modification)
    patient_pk = None if row.patient_pk is None else int(row.patient_pk)
    record_performed(conn, int(row.id), stored, patient_pk, now)
    if new_status != row.status:
        _transition(conn, int(row.id), new_status, policy, now)
    return stored
