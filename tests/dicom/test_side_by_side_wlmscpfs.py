"""radbridge next to DCMTK wlmscpfs serving the same entries: same answers where wlmscpfs
implements the key; radbridge also right where it does not (multi-valued AE, SPS status, UID lists)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from engine.domain.worklist import MatchSettings, build_response, build_select, requested_keys

from ..domain.factories import apply_records, order, patient
from .conftest import Radbridge, findscu, needs_dcmtk
from .wlm_peer import build_wlm_dir, start_wlmscpfs, stop

pytestmark = needs_dcmtk

ORDERS = [
    order("PL1", accession_number="A1", study_instance_uid="1.2.3.1", scheduled_station_ae_title="CT1",
          scheduled_start="202611220800"),
    order("PL2", accession_number="A2", study_instance_uid="1.2.3.2", scheduled_station_ae_title="CT1\\CT2",
          scheduled_start="202611221000"),
    order("PL3", accession_number="A3", study_instance_uid="1.2.3.3", modality="MR",
          scheduled_station_ae_title="MR1", scheduled_start="202611231200"),
    order("PL4", patient_id="P2", accession_number="A4", study_instance_uid="1.2.3.4",
          scheduled_station_ae_title="CT2", scheduled_start="202611241400"),
]  # fmt: skip
RETURN = ["AccessionNumber=", "PatientName=", "PatientID=", "StudyInstanceUID=",
          "ScheduledProcedureStepSequence[0].Modality=",
          "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus="]  # fmt: skip
SPS = "ScheduledProcedureStepSequence[0]."


def _all_entries(rb: Radbridge) -> list[Dataset]:
    query = Dataset()
    for key in ("AccessionNumber", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                "PatientSex", "StudyInstanceUID", "RequestedProcedureID", "RequestedProcedurePriority",
                "RequestedProcedureDescription", "ReferringPhysicianName", "RequestingPhysician"):  # fmt: skip
        setattr(query, key, "")
    query.ScheduledProcedureStepSequence = []
    rows = rb.db.read(lambda c: c.execute(build_select(query, MatchSettings())).mappings().all())
    return [build_response(r, requested_keys(query), "ISO_IR 100") for r in rows]


@pytest.fixture
def both(radbridge: Radbridge, tmp_path: Path) -> Iterator[tuple[Radbridge, int]]:
    apply_records(
        radbridge.db,
        radbridge.orders,
        [
            patient("P1", patient_name="DOE^JANE"),
            patient("P2", patient_name="ROE^RICHARD"),
            *ORDERS,
        ],
    )
    root = build_wlm_dir(_all_entries(radbridge), tmp_path / "wl")
    proc, port = start_wlmscpfs(root)
    yield radbridge, port
    stop(proc)


def _accessions(port: int, keys: list[str], out: Path) -> list[str]:
    return sorted(str(d.AccessionNumber) for d in findscu(port, [*RETURN, *keys], out))


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ([f"{SPS}ScheduledStationAETitle=MR1"], ["A3"]),
        ([f"{SPS}Modality=MR"], ["A3"]),
        ([f"{SPS}ScheduledProcedureStepStartDate=20261122"], ["A1", "A2"]),
        ([f"{SPS}ScheduledProcedureStepStartDate=20261123-20261124"], ["A3", "A4"]),
        (
            [
                f"{SPS}ScheduledProcedureStepStartDate=20261122",
                f"{SPS}ScheduledProcedureStepStartTime=0900-1100",
            ],
            ["A2"],
        ),
        (["PatientName=ROE*"], ["A4"]),
        (["PatientID=P2"], ["A4"]),
        (["AccessionNumber=A?"], ["A1", "A2", "A3", "A4"]),
    ],
)
def test_same_answers_where_wlmscpfs_implements_the_key(
    both: tuple[Radbridge, int], tmp_path: Path, keys: list[str], expected: list[str]
) -> None:
    rb, wlm_port = both
    ours = _accessions(rb.server.port, keys, tmp_path / "rb")
    theirs = _accessions(wlm_port, keys, tmp_path / "wlm")
    assert ours == theirs == expected


def test_multi_valued_station_ae_title_matches_any_value(
    both: tuple[Radbridge, int], tmp_path: Path
) -> None:
    rb, _ = both
    assert _accessions(rb.server.port, [f"{SPS}ScheduledStationAETitle=CT2"], tmp_path) == [
        "A2",
        "A4",
    ]


def test_uid_list_matches_each_listed_study(both: tuple[Radbridge, int], tmp_path: Path) -> None:
    rb, _ = both
    assert _accessions(rb.server.port, ["StudyInstanceUID=1.2.3.1\\1.2.3.3"], tmp_path) == [
        "A1",
        "A3",
    ]


def test_sps_status_key_is_matched(both: tuple[Radbridge, int], tmp_path: Path) -> None:
    rb, _ = both
    apply_records(rb.db, rb.patients, [patient("P2", event="A10")])
    got = _accessions(rb.server.port, [f"{SPS}ScheduledProcedureStepStatus=ARRIVED"], tmp_path)
    assert got == ["A4"]
