"""C-FIND requests the worklist cannot answer: malformed identifiers and foreign SOP Classes.

pynetdicom is the SCU; the request is put on the wire by hand (its C-FIND primitive,
the identifier bytes as given, the worklist presentation context) so that what the
SCU sends is exactly what the test says.
"""

from __future__ import annotations

import logging
import random
import time
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind as MWL,
)
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind as PATIENT_ROOT,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT,
)

from ..domain.factories import apply_records, order, patient
from .conftest import Radbridge


def _load(rb: Radbridge) -> None:
    apply_records(rb.db, rb.orders, [patient("P1"), order("PL1", accession_number="ACC1"),
                                     order("PL2", accession_number="ACC2")])  # fmt: skip


def _assoc(port: int) -> Any:
    ae = AE(ae_title="CT1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    return assoc


def _find(assoc: Any, identifier: bytes, sop_class: str = MWL) -> list[int]:
    """Send one C-FIND-RQ with ``identifier`` as its bytes on the worklist context; the statuses back."""
    context = assoc.accepted_contexts[0]
    request = C_FIND()
    request.MessageID, request.AffectedSOPClassUID, request.Priority = 7, sop_class, 2
    request.Identifier = BytesIO(identifier)
    assoc._reactor_checkpoint.clear()  # as Association.send_c_find does before sending
    while not assoc._is_paused:
        time.sleep(0.0001)
    assoc.dimse.send_msg(request, context.context_id)
    return [int(status.Status) for status, _ in assoc._wrap_find_responses(context.transfer_syntax[0], sop_class)
            if status]  # fmt: skip


def _query(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber, ds.PatientName = "", ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    item = Dataset()
    item.Modality = ""
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def _encoded(ds: Dataset) -> bytes:
    data = encode(ds, True, True)
    assert data is not None
    return data


def test_a_well_formed_identifier_sent_by_hand_matches(radbridge: Radbridge) -> None:
    _load(radbridge)
    assoc = _assoc(radbridge.server.port)
    statuses = _find(assoc, _encoded(_query()))
    assoc.release()
    assert statuses == [0xFF00, 0xFF00, 0x0000]


@pytest.mark.parametrize(
    "identifier",
    [random.Random(12).randbytes(64), random.Random(13).randbytes(300), b"\x10\x00\x10\x00\xff\xff\xff\x7fabc"],
    ids=["64 random bytes", "300 random bytes", "length past the end"],
)
def test_random_bytes_are_not_a_match_all_query(radbridge: Radbridge, identifier: bytes) -> None:
    _load(radbridge)
    assoc = _assoc(radbridge.server.port)
    statuses = _find(assoc, identifier)
    assert assoc.is_established
    assoc.release()
    assert statuses == [0xA900]  # PS3.4 K.4.1.1.4: Identifier does not match SOP Class


def test_a_truncated_identifier_is_refused(radbridge: Radbridge) -> None:
    _load(radbridge)
    assoc = _assoc(radbridge.server.port)
    data = _encoded(_query())
    statuses = _find(assoc, data[: len(data) - 5])
    assoc.release()
    assert statuses == [0xA900]


@pytest.mark.parametrize("sop_class", [PATIENT_ROOT, STUDY_ROOT], ids=["Patient Root", "Study Root"])
def test_a_query_retrieve_find_on_the_worklist_context_is_refused_and_the_association_lives_on(
    radbridge: Radbridge, sop_class: str, caplog: pytest.LogCaptureFixture
) -> None:
    _load(radbridge)
    caplog.set_level(logging.INFO)
    query = Dataset()
    query.QueryRetrieveLevel, query.PatientID = "PATIENT", ""
    assoc = _assoc(radbridge.server.port)
    refused = _find(assoc, _encoded(query), sop_class)
    then = _find(assoc, _encoded(_query()))
    assoc.release()
    assert refused == [0x0122]  # PS3.7 Annex C: Refused, SOP Class not supported
    assert then == [0xFF00, 0xFF00, 0x0000]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_refused_query_logs_no_patient_values(radbridge: Radbridge, caplog: pytest.LogCaptureFixture) -> None:
    _load(radbridge)
    caplog.set_level(logging.INFO)
    birth = "19700101-19710101-19720101"  # two '-': not a range (PS3.4 C.2.2.2.5)
    assoc = _assoc(radbridge.server.port)
    statuses = _find(assoc, _encoded(_query(PatientBirthDate=birth, PatientID="MRN4711")))
    assoc.release()
    assert statuses == [0xC000]
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("worklist query refused: PatientBirthDate" in m for m in logged)
    assert not [m for m in logged if "1970" in m or "MRN4711" in m]
