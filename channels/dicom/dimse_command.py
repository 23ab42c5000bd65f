"""DIMSE command sets read and written without pydicom (PS3.7 6.3.1, 9.3.1).

A command set is always Implicit VR Little Endian: (group, element) as two
little-endian ``uint16``, a ``uint32`` length, then the value. :func:`read_command`
walks one into its elements' raw values; :class:`StoreCommand` is what a C-STORE-RQ
(PS3.7 9.3.1.1) says; :func:`store_response` encodes the C-STORE-RSP (PS3.7 9.3.1.2)
with the elements pynetdicom writes for one: CommandGroupLength, AffectedSOPClassUID,
CommandField (0x8001), MessageIDBeingRespondedTo, CommandDataSetType (no data set),
Status and AffectedSOPInstanceUID.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from engine.errors import MalformedDataset

__all__ = ["C_STORE_RQ", "NO_DATASET", "StoreCommand", "read_command", "store_response", "unanswerable_store"]

C_STORE_RQ = 0x0001
_C_STORE_RSP = 0x8001
#: CommandDataSetType (0000,0800): this value means "no data set"; any other means one follows.
NO_DATASET = 0x0101

_AFFECTED_SOP_CLASS, _COMMAND_FIELD, _MESSAGE_ID = 0x0002, 0x0100, 0x0110
_RESPONDED_TO, _DATASET_TYPE, _STATUS, _AFFECTED_SOP_INSTANCE = 0x0120, 0x0800, 0x0900, 0x1000
_ERROR_COMMENT = 0x0902


def read_command(data: bytes) -> dict[int, bytes]:
    """The elements of a command set, element number -> raw value; :class:`MalformedDataset` if broken.

    Only group 0000 belongs in a command set (PS3.7 6.3.1); an element of another
    group, or one that runs past the end, makes the command unreadable.
    """
    elements: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise MalformedDataset("command element header runs past the end")
        group, element, length = struct.unpack_from("<HHI", data, pos)
        if group != 0x0000 or pos + 8 + length > end:
            raise MalformedDataset(f"command element ({group:04X},{element:04X}) is not a command element")
        elements[element] = data[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return elements


def _ui(value: bytes) -> str:
    return value.rstrip(b"\0 ").decode("ascii", "replace")


def _us(value: bytes) -> int | None:
    return struct.unpack("<H", value)[0] if len(value) == 2 else None


@dataclass(frozen=True, slots=True)
class StoreCommand:
    """A C-STORE-RQ's identifying elements (PS3.7 Table 9.3-1)."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str

    @classmethod
    def from_elements(cls, elements: dict[int, bytes]) -> StoreCommand | None:
        """The C-STORE-RQ in ``elements``, or None for any other command or one without a data set."""
        if _us(elements.get(_COMMAND_FIELD, b"")) != C_STORE_RQ:
            return None
        message_id = _us(elements.get(_MESSAGE_ID, b""))
        dataset_type = _us(elements.get(_DATASET_TYPE, b""))
        if message_id is None or dataset_type is None or dataset_type == NO_DATASET:
            return None
        return cls(message_id, _ui(elements.get(_AFFECTED_SOP_CLASS, b"")),
                   _ui(elements.get(_AFFECTED_SOP_INSTANCE, b"")))  # fmt: skip


def unanswerable_store(elements: dict[int, bytes]) -> str | None:
    """Why a C-STORE-RQ cannot be served at all (no Message ID to answer, or no Command Data Set Type to
    say whether a data set follows: both mandatory, PS3.7 9.3.1.1), else None (any other command too)."""
    if _us(elements.get(_COMMAND_FIELD, b"")) != C_STORE_RQ:
        return None
    missing = [name for name, element in (("Message ID", _MESSAGE_ID), ("Command Data Set Type", _DATASET_TYPE))
               if _us(elements.get(element, b"")) is None]
    return f"a C-STORE-RQ without {' or '.join(missing)}" if missing else None


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b"\0" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    """An LO value (at most 64 characters), padded with a space to even length."""
    raw = value[:64].encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def store_response(command: StoreCommand, status: int, comment: str = "") -> bytes:
    """The encoded C-STORE-RSP command set answering ``command`` with ``status`` (and its Error Comment,
    (0000,0902), when ``comment``: PS3.7 C.4.2.1.4 allows it with a failure status)."""
    body = b"".join((
        _element(_AFFECTED_SOP_CLASS, _uid(command.sop_class_uid)),
        _element(_COMMAND_FIELD, struct.pack("<H", _C_STORE_RSP)),
        _element(_RESPONDED_TO, struct.pack("<H", command.message_id)),
        _element(_DATASET_TYPE, struct.pack("<H", NO_DATASET)),
        _element(_STATUS, struct.pack("<H", status)),
        _element(_ERROR_COMMENT, _text(comment)) if comment else b"",
        _element(_AFFECTED_SOP_INSTANCE, _uid(command.sop_instance_uid)),
    ))  # fmt: skip
    return _element(0x0000, struct.pack("<I", len(body))) + body
