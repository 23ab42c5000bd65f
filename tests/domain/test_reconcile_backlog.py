"""``radbridge status`` on the job reconcile-images: its pending requests, and a stuck one under "needs attention".

An ADT that queues corrections of stored images said so nowhere once the job's last result line
was overwritten by its next run (the PIR campaign)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from engine.cli.main import _reconcile_text
from engine.cli.queries import engine_status, reconcile_backlog
from engine.cli.status_view import attention
from engine.domain.handlers import PatientsHandler
from engine.domain.reconcile_tables import reconcile_requests
from engine.domain.tables import patients
from engine.store.database import Database

from .factories import apply_records, patient

NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


def _request(db: Database, created_at: datetime) -> None:
    pk = db.read(lambda c: c.execute(patients.select()).first()).id
    db.writer.call(lambda c: c.execute(insert(reconcile_requests).values(
        patient_pk=pk, created_at=created_at, event_key="A08", trigger="A08")))


def test_pending_requests_are_counted_with_the_oldest_ones_age(db: Database, patients_handler: PatientsHandler) -> None:
    assert db.read(lambda c: reconcile_backlog(c, NOW)) == {"pending": 0, "oldest_pending_seconds": None}
    apply_records(db, patients_handler, [patient("P1")])
    _request(db, NOW - timedelta(seconds=30))
    _request(db, NOW - timedelta(seconds=5))
    assert db.read(lambda c: reconcile_backlog(c, NOW)) == {"pending": 2, "oldest_pending_seconds": 30.0}


def test_a_request_pending_for_over_an_hour_needs_attention(db: Database, patients_handler: PatientsHandler) -> None:
    apply_records(db, patients_handler, [patient("P1")])
    _request(db, datetime.now(UTC) - timedelta(minutes=5))
    data = db.read(engine_status)
    data["destinations"] = {}
    assert not [line for line in attention(data) if "reconciliation" in line]
    assert _reconcile_text(data["reconcile"]).startswith("image reconciliations pending: 1 (oldest 3")
    _request(db, datetime.now(UTC) - timedelta(hours=2))
    data = db.read(engine_status)
    data["destinations"] = {}
    late = [line for line in attention(data) if "reconciliation" in line]
    assert len(late) == 1 and late[0].startswith("images: 2 reconciliation/correction request(s) pending, the oldest")
