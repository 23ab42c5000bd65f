"""The worklist read back with DCMTK findscu and with pynetdicom (real clients, real SCP)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from channels.dicom.mwl import WorklistService

from ..domain.factories import apply_records, order, patient
from .conftest import Radbridge, dcmtk_env, findscu, needs_dcmtk

KEYS = [
    "AccessionNumber=",
    "PatientName=",
    "PatientID=",
    "StudyInstanceUID=",
    "RequestedProcedureID=",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID=",
    "ScheduledProcedureStepSequence[0].Modality=",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=",
]

ORDERS = [
    order("PL1", accession_number="ACC1", requested_procedure_id="RP1", scheduled_procedure_step_id="SPS1",
          study_instance_uid="1.2.3.1", scheduled_start="202611220930"),
    order("PL2", accession_number="ACC2", requested_procedure_id="RP2", scheduled_procedure_step_id="SPS2",
          study_instance_uid="1.2.3.2", modality="MR", scheduled_station_ae_title="MR1",
          scheduled_start="202611221415"),
]  # fmt: skip


def _load(rb: Radbridge) -> None:
    apply_records(rb.db, rb.orders, [patient("P1", patient_name="MÜLLER^JÜRGEN"), *ORDERS])


def _expected(rec: dict[str, str]) -> dict[str, str]:
    start = rec["scheduled_start"]
    return {
        "AccessionNumber": rec["accession_number"], "PatientName": "MÜLLER^JÜRGEN", "PatientID": "P1",
        "StudyInstanceUID": rec["study_instance_uid"], "RequestedProcedureID": rec["requested_procedure_id"],
        "ScheduledProcedureStepID": rec["scheduled_procedure_step_id"], "Modality": rec["modality"],
        "ScheduledStationAETitle": rec["scheduled_station_ae_title"],
        "ScheduledProcedureStepStartDate": start[:8], "ScheduledProcedureStepStartTime": start[8:] + "00",
    }  # fmt: skip


def _actual(ds: Dataset) -> dict[str, str]:
    sps = ds.ScheduledProcedureStepSequence[0]
    top = (
        "AccessionNumber",
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "RequestedProcedureID",
    )
    inner = ("ScheduledProcedureStepID", "Modality", "ScheduledStationAETitle",
             "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime")  # fmt: skip
    return {k: str(ds[k].value) for k in top} | {k: str(sps[k].value) for k in inner}


@needs_dcmtk
def test_findscu_reads_back_what_each_order_said(radbridge: Radbridge, tmp_path: Path) -> None:
    _load(radbridge)
    got = findscu(radbridge.server.port, KEYS, tmp_path / "out")
    assert [_actual(d) for d in got] == [_expected(o) for o in ORDERS]


@needs_dcmtk
def test_findscu_targeted_query_by_station_and_date(radbridge: Radbridge, tmp_path: Path) -> None:
    _load(radbridge)
    keys = [*KEYS[:-3], "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=MR1",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261122"]  # fmt: skip
    got = findscu(radbridge.server.port, keys, tmp_path / "out")
    assert [d.AccessionNumber for d in got] == ["ACC2"]


@needs_dcmtk
def test_findscu_returns_exactly_the_requested_keys(radbridge: Radbridge, tmp_path: Path) -> None:
    _load(radbridge)
    got = findscu(radbridge.server.port, ["PatientID=", "AccessionNumber=ACC1"], tmp_path / "out")
    assert len(got) == 1
    assert {e.keyword for e in got[0]} == {"SpecificCharacterSet", "PatientID", "AccessionNumber"}


def _pynetdicom_find(port: int, identifier: Dataset) -> list[Dataset]:
    ae = AE(ae_title="CT1")
    ae.add_requested_context("1.2.840.10008.5.1.4.31")
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        return [ds for status, ds in assoc.send_c_find(identifier, "1.2.840.10008.5.1.4.31")
                if status and status.Status in (0xFF00, 0xFF01)]  # fmt: skip
    finally:
        assoc.release()


def test_pynetdicom_client_reads_back_what_each_order_said(radbridge: Radbridge) -> None:
    _load(radbridge)
    query = Dataset()
    for key in (
        "AccessionNumber",
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "RequestedProcedureID",
    ):
        setattr(query, key, "")
    sps = Dataset()
    for key in ("ScheduledProcedureStepID", "Modality", "ScheduledStationAETitle",
                "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"):  # fmt: skip
        setattr(sps, key, "")
    query.ScheduledProcedureStepSequence = [sps]
    got = _pynetdicom_find(radbridge.server.port, query)
    assert [_actual(d) for d in got] == [_expected(o) for o in ORDERS]


def test_cancelled_order_leaves_and_changed_order_changes_in_place(radbridge: Radbridge) -> None:
    _load(radbridge)
    apply_records(radbridge.db, radbridge.orders, [
        {**ORDERS[0], "order_control": "CA", "order_status": "CA"},
        {**ORDERS[1], "order_control": "XO", "order_status": "SC", "scheduled_start": "202611221600"},
    ])  # fmt: skip
    query = Dataset()
    query.AccessionNumber = ""
    sps = Dataset()
    sps.ScheduledProcedureStepStartTime = ""
    query.ScheduledProcedureStepSequence = [sps]
    got = _pynetdicom_find(radbridge.server.port, query)
    assert [(d.AccessionNumber, d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime)
            for d in got] == [("ACC2", "160000")]  # fmt: skip


def test_merge_and_name_change_show_in_next_query(radbridge: Radbridge) -> None:
    apply_records(
        radbridge.db,
        radbridge.orders,
        [
            patient("TMP1", patient_name="TRAUMA^ONE"),
            order("PL9", patient_id="TMP1", accession_number="ACC9"),
        ],
    )
    apply_records(
        radbridge.db,
        radbridge.patients,
        [
            patient("REAL1", patient_name="REAL^NAME"),
            {
                "record": "merge",
                "patient_id": "REAL1",
                "issuer": "HOSP",
                "prior_patient_id": "TMP1",
                "prior_issuer": "HOSP",
            },
        ],
    )
    query = Dataset()
    query.PatientID = ""
    query.PatientName = ""
    query.AccessionNumber = "ACC9"
    first = _pynetdicom_find(radbridge.server.port, query)
    apply_records(
        radbridge.db,
        radbridge.patients,
        [patient("REAL1", patient_name="REAL^RENAMED", event="A08")],
    )
    second = _pynetdicom_find(radbridge.server.port, query)
    assert [(d.PatientID, str(d.PatientName)) for d in first] == [("REAL1", "REAL^NAME")]
    assert [str(d.PatientName) for d in second] == ["REAL^RENAMED"]


@needs_dcmtk
def test_findscu_cancel_stops_the_responses_with_cancel_status(
    radbridge: Radbridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = [order(f"PL{n}", accession_number=f"ACC{n}") for n in range(900)]  # more than one cancel round trip
    apply_records(radbridge.db, radbridge.orders, [patient("P1"), *many])
    # findscu sends its C-CANCEL after the first response; at full speed the SCP may send all
    # 900 before a descheduled findscu gets to it. Paced, the matches outlast its reaction by
    # seconds; the SCP still checks for the cancel between responses as it always does.
    find = WorklistService.find

    def paced(self: WorklistService, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for n, response in enumerate(find(self, *args, **kwargs)):
            if n:
                time.sleep(0.01)
            yield response

    monkeypatch.setattr(WorklistService, "find", paced)
    out = tmp_path / "out"
    out.mkdir()
    args = ["findscu", "-W", "-v", "--cancel", "1", "-aet", "CT1", "-aec", "RADBRIDGE", "-X", "-od", str(out),
            "127.0.0.1", str(radbridge.server.port), "-k", "AccessionNumber="]  # fmt: skip
    log = subprocess.run(args, env=dcmtk_env(), check=True, capture_output=True, text=True, timeout=60)
    assert 1 <= len(list(out.glob("rsp*.dcm"))) < len(many)
    assert "Final Find Response (Cancel" in log.stdout + log.stderr


LONG = order("PL3", accession_number="ACC3", requested_procedure_id="RequestedProcID-0017",
             scheduled_procedure_step_id="ScheduledProcStepID", scheduled_station_name="ScheduledStationName",
             scheduled_procedure_step_location="ScheduledProcStepLocation",
             scheduled_station_ae_title="CT1\\ScheduledStationAET2", study_instance_uid="1.2.3.3")  # fmt: skip
LONG_KEYS = ("RequestedProcedureID", "ScheduledProcedureStepID", "ScheduledStationName",
             "ScheduledProcedureStepLocation", "ScheduledStationAETitle")  # fmt: skip


def _long_values(ds: Dataset) -> tuple[Any, ...]:
    sps = ds.ScheduledProcedureStepSequence[0]
    return (ds.RequestedProcedureID, *(sps[k].value for k in LONG_KEYS[1:4]), list(sps.ScheduledStationAETitle))


_LONG_EXPECTED = ("RequestedProcID-0017", "ScheduledProcStepID", "ScheduledStationName", "ScheduledProcStepLocation",
                  ["CT1", "ScheduledStationAET2"])  # fmt: skip


def test_step_identifiers_longer_than_dicom_sh_are_returned_whole_and_match_whole(radbridge: Radbridge) -> None:
    """SH/AE values over 16 (the dcm4che OMI^O23 sample's IPC-4 has 19) are kept whole (engine.domain.lengths):
    the worklist returns them whole, a query for the whole SPS ID finds the step, and pydicom encodes them."""
    apply_records(radbridge.db, radbridge.orders, [patient("P1"), LONG])
    query = Dataset()
    query.RequestedProcedureID = ""
    sps = Dataset()
    for key in LONG_KEYS[1:]:
        setattr(sps, key, "")
    sps.ScheduledProcedureStepID = "ScheduledProcStepID"
    query.ScheduledProcedureStepSequence = [sps]
    (got,) = _pynetdicom_find(radbridge.server.port, query)
    assert _long_values(got) == _LONG_EXPECTED


@needs_dcmtk
def test_findscu_reads_step_identifiers_longer_than_dicom_sh_whole(radbridge: Radbridge, tmp_path: Path) -> None:
    apply_records(radbridge.db, radbridge.orders, [patient("P1"), LONG])
    keys = ["RequestedProcedureID=", *(f"ScheduledProcedureStepSequence[0].{k}=" for k in LONG_KEYS[1:]),
            "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT1"]  # fmt: skip
    (got,) = findscu(radbridge.server.port, keys, tmp_path / "out")
    assert _long_values(got) == _LONG_EXPECTED


#: PID-5 and OBR-4.2 with DICOM's delimiters escaped inside HL7 values: \E\ a backslash, \S\ a '^'.
DELIMITED = ("MSH|^~\\&|RIS|HOSP|RB|RAD|20261122083000||ORM^O01|D1|P|2.5.1\r"
             "PID|1||P9^^^HOSP||Smith\\E\\Jones^Ann\\S\\Marie=Lou||19700101|F\r"
             "ORC|NW|PL9|FPL9||SC\rOBR|1|PL9|FPL9|CTHN^CT HEAD\\E\\NECK^L" + "|" * 14 + "ACC9||||||CT\r")


def test_dicom_delimiters_inside_hl7_values_reach_the_worklist_as_one_value(radbridge: Radbridge) -> None:
    """The PACS showed "Smith": `Smith\\E\\Jones^Ann` became the PN `Smith\\Jones^Ann`, two values."""
    from engine.hl7.er7 import Message
    from engine.mapping import load_mappings
    from tests.conftest import ROOT

    mapping = load_mappings(ROOT / "mappings", timezone="UTC")["order-to-worklist"]
    apply_records(radbridge.db, radbridge.orders, list(mapping.apply(Message(DELIMITED)).records), DELIMITED)
    query = Dataset()
    query.PatientName = ""
    query.RequestedProcedureDescription = ""
    query.AccessionNumber = "ACC9"
    (got,) = _pynetdicom_find(radbridge.server.port, query)
    assert (got["PatientName"].VM, got["RequestedProcedureDescription"].VM) == (1, 1)
    assert str(got.PatientName) == "Smith Jones^Ann Marie Lou"
    assert got.RequestedProcedureDescription == "CT HEAD/NECK"
