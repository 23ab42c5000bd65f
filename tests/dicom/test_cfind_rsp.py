"""FindResponseFramer: pynetdicom's C-FIND-RSP command set, PDUs within the peer's maximum length."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND

from channels.dicom.cfind_rsp import FindResponseFramer, PdvList

MWL = "1.2.840.10008.5.1.4.31"
IDENTIFIER = bytes(range(256)) * 3


def _pynetdicom_command(status: int, identifier: bytes | None) -> bytes:
    rsp = C_FIND()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = MWL
    rsp.Status = status
    rsp.Identifier = BytesIO(identifier) if identifier else None
    msg = C_FIND_RSP()
    msg.primitive_to_message(rsp)
    pdus = list(msg.encode_msg(1, 0))
    return pdus[0].presentation_data_value_list[0][1][1:]


def _pdu_length(pdvs: PdvList) -> int:
    return sum(4 + 1 + len(data) for _, data in pdvs)  # item length, context ID, header + fragment


@pytest.mark.parametrize(("status", "with_dataset"), [(0xFF00, True), (0xFF01, True), (0x0000, False)])
def test_command_set_is_what_pynetdicom_encodes(status: int, with_dataset: bool) -> None:
    framer = FindResponseFramer(1, MWL, 7, 16384)
    assert framer.command(status, with_dataset) == _pynetdicom_command(status, IDENTIFIER if with_dataset else None)


def test_command_and_identifier_share_one_pdu_when_they_fit() -> None:
    framer = FindResponseFramer(3, MWL, 7, 16384)
    command = framer.command(0xFF00, True)
    assert framer.frame(command, IDENTIFIER) == [[(3, b"\x03" + command), (3, b"\x02" + IDENTIFIER)]]


@pytest.mark.parametrize("max_pdu", [64, 100, 257, 800])
def test_larger_responses_are_fragmented_within_the_maximum_pdu_length(max_pdu: int) -> None:
    framer = FindResponseFramer(1, MWL, 7, max_pdu)
    command = framer.command(0xFF00, True)
    pdus = framer.frame(command, IDENTIFIER)
    assert all(_pdu_length(p) <= max_pdu for p in pdus)
    assert all(len(p) == 1 for p in pdus)  # one PDV a PDU once fragmented, as pynetdicom sends
    headers = [p[0][1][0] for p in pdus]
    assert headers[-1] == 0x02 and 0x03 in headers
    assert b"".join(p[0][1][1:] for p in pdus if p[0][1][0] & 1) == command
    assert b"".join(p[0][1][1:] for p in pdus if not p[0][1][0] & 1) == IDENTIFIER


def test_unlimited_maximum_pdu_length_sends_one_pdu() -> None:
    framer = FindResponseFramer(1, MWL, 7, 0)
    assert len(framer.frame(framer.command(0xFF00, True), IDENTIFIER * 100)) == 1
