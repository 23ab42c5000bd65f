"""Every answered worklist C-FIND is in the audit trail: who (calling AE, address), what (items, steps), when.

Real clients on the wire: DCMTK findscu (the encoded-stream path) and pynetdicom (the
dataset path under Explicit VR Big Endian); the audit row is committed before any response.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian
from pynetdicom import AE
from sqlalchemy import select, text

from engine.store.schema import audit_events

from ..domain.factories import apply_records, order, patient
from .conftest import Radbridge, findscu, needs_dcmtk

MWL = "1.2.840.10008.5.1.4.31"

ORDERS = [
    order("PL1", accession_number="ACC1", scheduled_procedure_step_id="SPS1", study_instance_uid="1.2.3.1",
          scheduled_station_ae_title="CT1", scheduled_start="202611220930"),
    order("PL2", accession_number="ACC2", scheduled_procedure_step_id="SPS2", study_instance_uid="1.2.3.2",
          scheduled_station_ae_title="CT1", scheduled_start="202611221015"),
    order("PL3", accession_number="ACC3", scheduled_procedure_step_id="SPS3", study_instance_uid="1.2.3.3",
          modality="MR", scheduled_station_ae_title="MR1", scheduled_start="202611221415"),
]  # fmt: skip


def _load(rb: Radbridge) -> None:
    apply_records(rb.db, rb.orders, [patient("P1", patient_name="DOE^JANE"), *ORDERS])


def _events(rb: Radbridge) -> list[dict[str, Any]]:
    rows = rb.db.read(lambda c: c.execute(select(audit_events).order_by(audit_events.c.id)).mappings().all())
    return [dict(r) | {"detail": json.loads(r["detail"])} for r in rows if r["action"] == "worklist.query"]


@needs_dcmtk
def test_a_findscu_query_is_audited_with_caller_address_items_and_steps(radbridge: Radbridge, tmp_path: Path):
    _load(radbridge)
    before = datetime.now(UTC) - timedelta(seconds=1)
    got = findscu(radbridge.server.port, ["PatientName=", "AccessionNumber=",
                                          "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT1"],
                  tmp_path / "out", aet="CT_SCANNER_7")  # fmt: skip
    assert len(got) == 2
    (event,) = _events(radbridge)
    assert event["actor"] == "CT_SCANNER_7"
    assert (event["object_type"], event["object_id"]) == ("worklist", "CT_SCANNER_7")
    assert before <= event["at"] <= datetime.now(UTC)
    detail = event["detail"]
    assert detail["calling_ae"] == "CT_SCANNER_7" and detail["called_ae"] == "RADBRIDGE"
    assert detail["remote"].startswith("127.0.0.1:") and int(detail["remote"].rsplit(":", 1)[1]) > 0
    assert (detail["items"], detail["steps"], detail["accession_numbers"]) == (2, ["SPS1", "SPS2"], ["ACC1", "ACC2"])
    assert detail["keys"] == ["ScheduledProcedureStepSequence.ScheduledStationAETitle"]
    assert "DOE" not in event["detail"].__repr__()  # the query's and the responses' values are not copied


def test_each_query_of_a_pynetdicom_association_is_audited_even_when_nothing_matches(radbridge: Radbridge):
    _load(radbridge)
    ae = AE(ae_title="MR_SCU")
    ae.add_requested_context(MWL, [ExplicitVRBigEndian])  # the dataset path (not the encoded stream)
    assoc = ae.associate("127.0.0.1", radbridge.server.port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        for station in ("MR1", "NOBODY"):
            q = Dataset()
            q.PatientID = ""
            sps = Dataset()
            sps.ScheduledStationAETitle = station
            q.ScheduledProcedureStepSequence = [sps]
            statuses = [s.Status for s, _ in assoc.send_c_find(q, MWL)]
            assert statuses[-1] == 0x0000
    finally:
        assoc.release()
    events = _events(radbridge)
    assert [(e["actor"], e["detail"]["items"], e["detail"]["steps"]) for e in events] == [
        ("MR_SCU", 1, ["SPS3"]), ("MR_SCU", 0, [])]
    assert events[0]["detail"]["remote"] == events[1]["detail"]["remote"]  # one association, one peer port


def test_a_query_that_cannot_be_audited_discloses_nothing(radbridge: Radbridge):
    _load(radbridge)
    radbridge.db.writer.call(lambda c: c.execute(text("DROP TABLE audit_events")))
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", radbridge.server.port, ae_title="RADBRIDGE")
    try:
        q = Dataset()
        q.PatientName = ""
        responses = [(s.Status, ds) for s, ds in assoc.send_c_find(q, MWL)]
    finally:
        assoc.release()
    assert [(status, ds) for status, ds in responses] == [(0xC000, None)]
