"""DIMSE command sets without pydicom: C-STORE-RQ read, C-STORE-RSP written as pynetdicom writes it."""

from __future__ import annotations

import struct

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from channels.dicom.dimse_command import StoreCommand, read_command, store_response
from engine.errors import MalformedDataset

CT = "1.2.840.10008.5.1.4.1.1.2"


def _command(**elements: object) -> bytes:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = encode(ds, True, True)  # command sets are Implicit VR Little Endian
    assert body is not None
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def test_a_store_request_is_read() -> None:
    raw = _command(AffectedSOPClassUID=CT, CommandField=1, MessageID=7, Priority=0, CommandDataSetType=0,
                   AffectedSOPInstanceUID="1.2.3")
    assert StoreCommand.from_elements(read_command(raw)) == StoreCommand(7, CT, "1.2.3")


@pytest.mark.parametrize(
    "elements",
    [
        {"AffectedSOPClassUID": "1.2.840.10008.1.1", "CommandField": 0x30, "MessageID": 1,
         "CommandDataSetType": 0x0101},
        {"AffectedSOPClassUID": CT, "CommandField": 1, "MessageID": 1, "CommandDataSetType": 0x0101},
        {"AffectedSOPClassUID": CT, "CommandField": 1, "CommandDataSetType": 0},
    ],
    ids=["c-echo", "store-without-data-set", "store-without-message-id"],
)
def test_anything_else_is_not_a_store_request(elements: dict[str, object]) -> None:
    assert StoreCommand.from_elements(read_command(_command(**elements))) is None


@pytest.mark.parametrize("raw", [b"\x00\x00\x00", struct.pack("<HHI", 8, 0x18, 2) + b"12",
                                 struct.pack("<HHI", 0, 0x100, 20) + b"12"])
def test_a_broken_command_set_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedDataset):
        read_command(raw)


@pytest.mark.parametrize(("instance", "status"), [("1.2.3", 0x0000), ("1.2.34", 0xA700), ("1.2.3", 0xC211)])
def test_the_response_is_what_pynetdicom_encodes(instance: str, status: int) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = instance
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = list(message.encode_msg(1, 0))
    ((_, pdv),) = pdata.presentation_data_value_list
    assert store_response(StoreCommand(7, CT, instance), status) == pdv[1:]
