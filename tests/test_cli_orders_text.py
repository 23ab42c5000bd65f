"""``radbridge orders show``'s text names what each code is."""

from __future__ import annotations

from engine.cli.orders import _text


def test_the_last_order_control_and_status_are_labelled() -> None:
    """A cancelled order read "last CA CA at ...": which CA is which was for the reader to guess (new-user
    campaign)."""
    order = {"placer_order_number": "PL1", "filler_order_number": "", "accession_number": "ACC1",
             "requested_procedure_id": "RP1", "requested_procedure_description": "CT head", "patient_id": "P1",
             "issuer": "H", "study_instance_uid": "1.2.3", "order_control": "CA", "order_status": "CA",
             "updated_at": "2026-12-07T14:25:02+00:00", "steps": []}
    line = _text([order]).splitlines()[1]
    assert line == ("  study 1.2.3; last order control (ORC-1) CA, order status (ORC-5) CA,"
                    " at 2026-12-07T14:25:02+00:00")
    assert "order status (ORC-5) -," in _text([{**order, "order_status": ""}])
