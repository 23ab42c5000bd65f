"""ADT visit events as a modality sees them: Current Patient Location (0038,0300) in the worklist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE

from ..domain.factories import apply_records, order, patient
from .conftest import Radbridge, findscu, needs_dcmtk

MWL = "1.2.840.10008.5.1.4.31"


def _locations(rb: Radbridge) -> list[tuple[str, str]]:
    """(AccessionNumber, CurrentPatientLocation) of every visible entry, via pynetdicom."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", rb.server.port, ae_title="RADBRIDGE")
    assert assoc.is_established
    query = Dataset()
    query.AccessionNumber, query.CurrentPatientLocation = "", ""
    found = [
        (str(ds.AccessionNumber), str(ds.CurrentPatientLocation))
        for status, ds in assoc.send_c_find(query, MWL)
        if status and status.Status in (0xFF00, 0xFF01) and ds is not None
    ]
    assoc.release()
    return found


def _adt(rb: Radbridge, event: str, **fields: Any) -> None:
    apply_records(rb.db, rb.patients, [patient(event=event, **fields)])


def test_transfer_and_its_cancel_show_in_the_next_query(radbridge: Radbridge) -> None:
    apply_records(radbridge.db, radbridge.orders, [patient(), order("PL1", accession_number="ACC1")])
    assert _locations(radbridge) == [("ACC1", "")]
    _adt(radbridge, "A01", assigned_patient_location="W1^101^A")
    assert _locations(radbridge) == [("ACC1", "W1^101^A")]
    _adt(radbridge, "A02", assigned_patient_location="W2^201^B")
    assert _locations(radbridge) == [("ACC1", "W2^201^B")]
    _adt(radbridge, "A12")
    assert _locations(radbridge) == [("ACC1", "W1^101^A")]


def test_discharge_empties_the_location_keeps_the_entry_and_a13_restores_it(
    radbridge: Radbridge,
) -> None:
    apply_records(radbridge.db, radbridge.orders, [patient(), order("PL1", accession_number="ACC1")])
    _adt(radbridge, "A01", assigned_patient_location="W1")
    _adt(radbridge, "A03")
    assert _locations(radbridge) == [("ACC1", "")]
    _adt(radbridge, "A13")
    assert _locations(radbridge) == [("ACC1", "W1")]


def test_a11_undoes_arrival_and_location(radbridge: Radbridge) -> None:
    apply_records(radbridge.db, radbridge.orders, [patient(), order("PL1", accession_number="ACC1")])
    _adt(radbridge, "A04", assigned_patient_location="RAD^X1")
    _adt(radbridge, "A10")
    _adt(radbridge, "A11")
    assert _locations(radbridge) == [("ACC1", "")]


@needs_dcmtk
def test_findscu_matches_and_returns_the_location(radbridge: Radbridge, tmp_path: Path) -> None:
    apply_records(radbridge.db, radbridge.orders, [
        patient("P1"), order("PL1", accession_number="ACC1"),
        patient("P2"), order("PL2", patient_id="P2", accession_number="ACC2"),
    ])  # fmt: skip
    _adt(radbridge, "A01", patient_id="P2", assigned_patient_location="ICU^4")
    got = findscu(radbridge.server.port, ["AccessionNumber=", "CurrentPatientLocation=ICU*"], tmp_path)
    assert [(d.AccessionNumber, d.CurrentPatientLocation) for d in got] == [("ACC2", "ICU^4")]
