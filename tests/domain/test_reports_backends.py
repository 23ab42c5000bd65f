"""Reports on SQLite and PostgreSQL: the statements compiled once (engine.store.fast) on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.config.models import EngineConfig
from engine.domain.handlers import OrdersHandler, order_policy
from engine.domain.report_handler import ReportsHandler, receivers, report_policy
from engine.domain.report_tables import report_versions, reports
from engine.hl7.er7 import Message
from engine.store.database import Database
from tests.conftest import ROOT, migrated
from tests.domain.factories import apply_records, order, patient
from tests.domain.test_reports import ORU, report


@pytest.fixture
def both(db_url: str) -> Iterator[Database]:
    """A migrated database on each backend (tests/conftest.py ``db_url``)."""
    yield from migrated(db_url)


def test_versions_waiting_reports_and_the_oru_out_on_each_backend(both: Database, tmp_path: Path) -> None:
    config = EngineConfig.model_validate({"mappings_dir": ROOT / "mappings",
                                          "reports": {"receivers": [{"name": "ehr", "mllp": "127.0.0.1:1"}]}})
    handler = ReportsHandler(report_policy(config), receivers(config))
    orders = OrdersHandler(order_policy(EngineConfig(mappings_dir=tmp_path)))
    assert apply_records(both, handler, [report("F", "Early.", placer_order_number="PLB")], ORU) == []
    apply_records(both, orders, [patient(), order("PLB")])
    sent = apply_records(both, handler, [patient(), order("PLB")])
    assert len(sent) == 1
    corrected = apply_records(both, handler, [report("C", "Corrected.", placer_order_number="PLB")], ORU)
    obr = Message(corrected[0].payload.decode()).segment("OBR")
    assert obr is not None and obr.field(25) == "C"
    rows = both.writer.call(lambda c: c.execute(select(report_versions.c.version, report_versions.c.result_status)
                                                .order_by(report_versions.c.version)).all())
    assert [tuple(r) for r in rows] == [(1, "F"), (2, "C")]
    assert both.writer.call(lambda c: c.execute(select(reports.c.order_pk)).scalar_one()) is not None
