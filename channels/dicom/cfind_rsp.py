"""C-FIND-RSP messages encoded to presentation data values without pydicom (PS3.7 9.3.2.2, PS3.8 9.3.5).

Every pending response of one C-FIND differs from the next only in its Status and its
identifier, so :class:`FindResponseFramer` encodes the command set once per request
(Implicit VR Little Endian, PS3.7 6.3.1) and patches the status in. The command set
holds what pynetdicom writes for a C-FIND-RSP: CommandGroupLength,
AffectedSOPClassUID, CommandField (0x8020), MessageIDBeingRespondedTo,
CommandDataSetType and Status.

:meth:`FindResponseFramer.frame` turns one response into the PDV lists of its
P-DATA-TF PDUs (PS3.8 9.3.5.1, Annex E): one PDU holding the command and the
identifier when both fit within the peer's maximum PDU length, else the command and
then the identifier fragmented as pynetdicom does. A PDU never mixes two messages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["FindResponseFramer", "PdvList"]

#: (presentation context ID, message control header + fragment) for each PDV of one PDU.
PdvList = list[tuple[int, bytes]]

_C_FIND_RSP = 0x8020
_DATASET_PRESENT = 0x0001
_NO_DATASET = 0x0101
#: PDV item length (4) + presentation context ID (1) + message control header (1).
_PDV_OVERHEAD = 6
#: Message control header (PS3.8 E.2): bit 0 command/data, bit 1 last fragment.
_COMMAND_LAST, _COMMAND_MORE, _DATA_LAST, _DATA_MORE = b"\x03", b"\x01", b"\x02", b"\x00"


def _element(group_element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, group_element, len(value)) + value


def _command_set(sop_class_uid: str, message_id: int, dataset_type: int, status: int) -> bytes:
    uid = sop_class_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\0"
    body = b"".join(
        (
            _element(0x0002, uid),
            _element(0x0100, struct.pack("<H", _C_FIND_RSP)),
            _element(0x0120, struct.pack("<H", message_id)),
            _element(0x0800, struct.pack("<H", dataset_type)),
            _element(0x0900, struct.pack("<H", status)),
        )
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _fragments(data: bytes, room: int) -> list[bytes]:
    if room <= 0:
        return [data]
    return [data[i : i + room] for i in range(0, len(data), room)] or [b""]


@dataclass(frozen=True, slots=True)
class FindResponseFramer:
    """Frames the responses to one C-FIND request on one presentation context.

    ``max_pdu`` is the peer's Maximum Length Received (PS3.8 D.1), 0 for unlimited.
    """

    context_id: int
    sop_class_uid: str
    message_id: int
    max_pdu: int

    def command(self, status: int, with_dataset: bool) -> bytes:
        """The encoded command set of a response with ``status``."""
        dataset_type = _DATASET_PRESENT if with_dataset else _NO_DATASET
        return _command_set(self.sop_class_uid, self.message_id, dataset_type, status)

    def frame(self, command: bytes, identifier: bytes) -> list[PdvList]:
        """The PDUs (as PDV lists) of one response: ``command`` plus ``identifier``."""
        cx = self.context_id
        if not self.max_pdu or 2 * _PDV_OVERHEAD + len(command) + len(identifier) <= self.max_pdu:
            return [[(cx, _COMMAND_LAST + command), (cx, _DATA_LAST + identifier)]]
        return [*self._split(command, _COMMAND_MORE, _COMMAND_LAST),
                *self._split(identifier, _DATA_MORE, _DATA_LAST)]  # fmt: skip

    def _split(self, data: bytes, more: bytes, last: bytes) -> list[PdvList]:
        parts = _fragments(data, self.max_pdu - _PDV_OVERHEAD)
        return [[(self.context_id, (last if n == len(parts) - 1 else more) + part)]
                for n, part in enumerate(parts)]  # fmt: skip
