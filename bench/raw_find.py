"""A C-FIND SCU that only counts: associates, sends one request, reads PDUs off the socket.

The benchmark's ceiling for what an SCP can stream: no dataset is decoded or printed
(findscu prints every response; pynetdicom decodes each one with pydicom). PDUs are
built with pynetdicom's PDU classes; responses are read with plain ``socket`` calls
(PS3.8 9.3: PDU type, reserved byte, 4-byte big-endian length; PS3.8 E.2: PDV
message control header). Only the Status (0000,0900) of each command set is read.
"""

from __future__ import annotations

import socket
import struct
from io import BytesIO
from typing import BinaryIO

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_FIND_RQ
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import build_context

MWL = "1.2.840.10008.5.1.4.31"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_A_ASSOCIATE_AC, _P_DATA_TF = 0x02, 0x04
_RELEASE_RQ = bytes([0x05, 0]) + struct.pack(">I", 4) + b"\0\0\0\0"
_STATUS = struct.pack("<HHI", 0x0000, 0x0900, 2)  # implicit VR header of (0000,0900)
MAX_PDU = 16384


def _associate_rq(calling: str, called: str) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    context = build_context(MWL, [IMPLICIT_VR_LITTLE_ENDIAN])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = MAX_PDU
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1"
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _find_rq(query: Dataset) -> list[bytes]:
    request = C_FIND()
    request.MessageID, request.AffectedSOPClassUID, request.Priority = 1, MWL, 2
    request.Identifier = BytesIO(encode(query, True, True) or b"")
    message = C_FIND_RQ()
    message.primitive_to_message(request)
    return [bytes(P_DATA_TF(p).encode()) for p in message.encode_msg(1, MAX_PDU)]


def _read_pdu(stream: BinaryIO) -> tuple[int, bytes]:
    header = stream.read(6)
    if len(header) < 6:
        raise ConnectionError("association closed")
    return header[0], stream.read(struct.unpack(">I", header[2:])[0])


def _statuses(body: bytes, command: bytearray) -> list[int]:
    """Statuses of the command sets completed by the PDVs of one P-DATA-TF body."""
    out = []
    offset = 0
    while offset < len(body):
        length = struct.unpack(">I", body[offset : offset + 4])[0]
        control, data = body[offset + 5], body[offset + 6 : offset + 4 + length]
        offset += 4 + length
        if control & 1:
            command += data
            if control & 2:
                at = command.find(_STATUS) + len(_STATUS)
                out.append(struct.unpack("<H", command[at : at + 2])[0])
                command.clear()
    return out


def raw_find(port: int, query: Dataset, calling: str = "CT000", called: str = "RADBRIDGE") -> int:
    """Run one worklist C-FIND on 127.0.0.1:``port``; return the pending responses counted."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = sock.makefile("rb")
        sock.sendall(_associate_rq(calling, called))
        if _read_pdu(stream)[0] != _A_ASSOCIATE_AC:
            raise ConnectionError("association not accepted")
        for pdu in _find_rq(query):
            sock.sendall(pdu)
        pending = 0
        command = bytearray()
        while True:
            kind, body = _read_pdu(stream)
            if kind != _P_DATA_TF:
                raise ConnectionError(f"unexpected PDU type 0x{kind:02X}")
            for status in _statuses(body, command):
                if status not in (0xFF00, 0xFF01):
                    sock.sendall(_RELEASE_RQ)
                    _read_pdu(stream)
                    return pending
                pending += 1
