"""Association policy of the worklist SCP, driven by pynetdicom as the modality.

C-CANCEL is covered by test_mwl_findscu (DCMTK findscu --cancel) and test_mwl_service.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL

from channels.dicom.server import start_dicom_server
from engine.domain.handlers import OrdersHandler, order_policy
from engine.store.database import Database
from tests.dicom.conftest import Radbridge, make_config
from tests.domain.factories import apply_records, order


def _query() -> Dataset:
    query = Dataset()
    query.PatientName = ""
    query.AccessionNumber = ""
    item = Dataset()
    item.ScheduledStationAETitle = "CT1"
    query.ScheduledProcedureStepSequence = [item]
    return query


def _load(db: Database, handler: OrdersHandler, count: int) -> None:
    apply_records(db, handler, [order(f"PL{i}", accession_number=f"A{i:04d}") for i in range(count)])


@pytest.fixture
def restricted(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = make_config(tmp_path, dicom={"port": 0, "ae_title": "RADBRIDGE", "accepted_calling_ae_titles": ["CT1"]})
    db = Database(f"sqlite:///{tmp_path / 'rb.db'}", sqlite_synchronous="NORMAL")
    db.migrate()
    server = start_dicom_server(config, db)
    try:
        _load(db, OrdersHandler(order_policy(config)), 3)
        yield server
    finally:
        server.stop()
        db.close()


def test_only_accepted_calling_ae_titles_may_associate(restricted) -> None:  # type: ignore[no-untyped-def]
    for calling, expected in (("CT1", True), ("INTRUDER", False)):
        ae = AE(ae_title=calling)
        ae.add_requested_context(MWL)
        assoc = ae.associate("127.0.0.1", restricted.port, ae_title="RADBRIDGE")
        assert assoc.is_established is expected
        if assoc.is_established:
            found = [ds for status, ds in assoc.send_c_find(_query(), MWL) if status.Status == 0xFF00]
            assert len(found) == 3
            assoc.release()


def test_wrong_called_ae_title_is_rejected(radbridge: Radbridge) -> None:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", radbridge.server.port, ae_title="NOT_US")
    assert not assoc.is_established

