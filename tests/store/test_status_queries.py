"""``radbridge status``'s queries on every backend: the image counts grouped a boolean expression, which
PostgreSQL refused (GroupingError: the engine's status command failed there, found by CI)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from engine.cli.queries import engine_status, image_counts
from engine.domain.instance_tables import quarantined_instances
from engine.domain.instances import PROCESSING_FAILURE


def _quarantined(status: int, received_at: datetime) -> dict[str, object]:
    return {"received_at": received_at, "received_from_ae": "CT1", "sop_class_uid": "1.2", "sop_instance_uid": "1.2.3",
            "transfer_syntax_uid": "1.2.840.10008.1.2.1", "status": status, "reason": "r", "location": "quarantine",
            "path": "x.dcm", "size": 1, "sha256": "0" * 64}


def test_status_counts_refusals_and_processing_failures_on_every_backend(db) -> None:
    now = datetime.now(UTC)
    rows = [_quarantined(0xC221, now), _quarantined(0xC221, now - timedelta(hours=1)),
            _quarantined(PROCESSING_FAILURE, now), _quarantined(0xA900, now - timedelta(days=3))]
    db.writer.call(lambda c: c.execute(insert(quarantined_instances), rows))
    assert db.read(image_counts) == {"quarantined": 4, "quarantined_last_24h": 3, "failed_last_24h": 1}
    data = db.read(engine_status)
    assert data["images"] == {"quarantined": 4, "quarantined_last_24h": 3, "failed_last_24h": 1}
    assert data["reconcile"] == {"pending": 0, "oldest_pending_seconds": None}
