"""An association pynetdicom negotiated, then driven here, on its socket, in the sending thread.

pynetdicom runs two polling threads per association (the DUL reactor wakes every
0.1 ms, the association's every 1 ms) and hands every PDU between threads: on a
busy two-core machine that costs the PACS beside it the CPU it needs, and caps
forwarding well under DCMTK ``storescu``'s rate. For C-STORE as an SCU none of
that is needed: once pynetdicom has negotiated the association (A-ASSOCIATE-RQ
and -AC, presentation contexts, maximum lengths, TLS), :meth:`StoreLink.detach`
stops both of its threads (they exit without touching the socket) and this class
speaks the Data Transfer state itself, with blocking I/O in one thread, as
storescu does:

- a C-STORE-RQ: the command set (implicit VR little endian) and the dataset, in
  P-DATA-TF PDUs of at most the peer's Maximum Length (PS3.8 9.3.5, E.2), the
  dataset read straight into a reused framed buffer and sent in batches of 64 KB;
- the C-STORE-RSP read back (its Status, Error Comment, Message ID Being
  Responded To, PS3.7 9.3.1.2) within the DIMSE timeout;
- A-RELEASE-RQ/RP at the end, A-ABORT on anything unexpected (PS3.8 9.3.6-9.3.8).

An idle link is not read: a peer that released, aborted or closed meanwhile
shows as readable (or closed) and :attr:`is_established` is then False, so the
pool opens a fresh association. Checked against pynetdicom 3.0
(:data:`TESTED_VERSIONS`); with another version :func:`detachable` is False and
pynetdicom's own ``send_c_store`` is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynetdicom
from pydicom.dataset import Dataset

from engine.archive.part10 import dataset_offset
from engine.errors import MalformedDataset

__all__ = [
    "TESTED_VERSIONS", "Fixity", "SourceDamaged", "StoreLink", "detachable", "encode_store_command",
    "parse_command", "pdus",
]  # fmt: skip

TESTED_VERSIONS = ("3.0.",)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATASET = 0x0101  # (0000,0800) Command Data Set Type: no data set follows
#: Message bytes per PDV when the peer sets no limit (Maximum Length 0).
UNLIMITED_FRAGMENT = 1 << 20
#: Bytes read from the file and written per ``sendall``. Small enough that the peer is already
#: receiving and parsing the first fragments while the rest is read and hashed (the whole image
#: hashed before its first byte left used to idle the PACS for that long, once per image); only
#: the batch with the last fragment waits for the digest.
BATCH_BYTES = 1 << 16
_P_DATA_TF, _A_RELEASE_RQ, _A_RELEASE_RP, _A_ABORT = 0x04, 0x05, 0x06, 0x07
_MAX_RESPONSE_BYTES = 1 << 20  # a C-STORE-RSP is a few hundred bytes
_META_HEAD = 144  # preamble, DICM and the (0002,0000) element: enough to find the dataset
_PDU_HEADER = struct.Struct(">BBIIBB")  # PDU type, reserved, PDU length, PDV length, context, control


class LinkBroken(Exception):
    """The association ended or the peer answered something that is not a C-STORE-RSP."""


class SourceDamaged(Exception):
    """The file being sent does not match its recorded checksum; the association was aborted
    before the dataset's last fragment, so the peer stored nothing."""


@dataclass(frozen=True, slots=True)
class Fixity:
    """The size and SHA-256 of a stored dataset (the bytes after the File Meta Information)."""

    size: int
    sha256: str


def _element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw  # UI values are padded with NUL to even length


def encode_store_command(sop_class_uid: str, sop_instance_uid: str, message_id: int, priority: int = 0) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), implicit VR little endian, group length first."""
    body = b"".join([
        _element(0x0000, 0x0002, _uid(sop_class_uid)),
        _element(0x0000, 0x0100, struct.pack("<H", C_STORE_RQ)),
        _element(0x0000, 0x0110, struct.pack("<H", message_id)),
        _element(0x0000, 0x0700, struct.pack("<H", priority)),
        _element(0x0000, 0x0800, struct.pack("<H", 0x0000)),  # a data set follows
        _element(0x0000, 0x1000, _uid(sop_instance_uid)),
    ])
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def parse_command(data: bytes) -> dict[int, bytes]:
    """The elements of an implicit VR little endian command set: element number -> value bytes."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, pos)
        if group != 0x0000 or pos + 8 + length > len(data):
            raise LinkBroken("malformed command set in the response")
        out[element] = data[pos + 8:pos + 8 + length]
        pos += 8 + length
    return out


def _pdu(context_id: int, control: int, fragment: memoryview) -> bytes:
    """One P-DATA-TF PDU with one PDV (message control header: bit 0 command, bit 1 last fragment)."""
    item_length = len(fragment) + 2
    return struct.pack(">BBIIBB", _P_DATA_TF, 0, item_length + 4, item_length, context_id, control) + bytes(fragment)


def pdus(context_id: int, data: bytes, is_command: bool, ends_message: bool, size: int) -> list[bytes]:
    """``data`` cut into PDUs of at most ``size`` message bytes; the last marked last if ``ends_message``."""
    base = 0x01 if is_command else 0x00
    view = memoryview(data)
    out = []
    for start in range(0, len(data), size):
        last = ends_message and start + size >= len(data)
        out.append(_pdu(context_id, base | (0x02 if last else 0x00), view[start:start + size]))
    return out


def detachable(assoc: Any) -> bool:
    """True when ``assoc`` is a pynetdicom association :meth:`StoreLink.detach` knows how to take over."""
    dul = getattr(assoc, "dul", None)
    return (pynetdicom.__version__.startswith(TESTED_VERSIONS)
            and isinstance(getattr(getattr(dul, "socket", None), "socket", None), socket.socket)
            and hasattr(dul, "_kill_thread") and hasattr(assoc, "_kill") and hasattr(assoc, "_reactor_checkpoint"))


class StoreLink:
    """One established association, sending C-STOREs in the calling thread (not thread-safe: one user)."""

    def __init__(self, sock: socket.socket, accepted_contexts: list[Any], max_length: int,
                 dimse_timeout: float) -> None:
        self.accepted_contexts = accepted_contexts
        self._sock: socket.socket | None = sock
        self._size = max_length - 6 if max_length else UNLIMITED_FRAGMENT
        self._timeout = dimse_timeout
        self.is_rejected = False
        self._framed: _Frames | None = None

    @classmethod
    def detach(cls, assoc: Any, dimse_timeout: float, join_seconds: float = 5.0) -> StoreLink:
        """Stop ``assoc``'s threads (established, :func:`detachable`) and take its socket."""
        sock = assoc.dul.socket.socket
        assoc._reactor_checkpoint.set()
        assoc._kill = True
        assoc.dul._kill_thread = True
        assoc.dul.join(join_seconds)
        if assoc.dul.is_alive():
            raise LinkBroken("pynetdicom's DUL thread did not stop")
        sock.settimeout(dimse_timeout)
        return cls(sock, list(assoc.accepted_contexts), int(assoc.acceptor.maximum_length), dimse_timeout)

    @property
    def is_established(self) -> bool:
        """Open, and nothing arrived while idle (a release request, an abort or a close)."""
        if self._sock is None:
            return False
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            readable = [self._sock]
        pending = getattr(self._sock, "pending", None)  # TLS: decrypted bytes select cannot see
        if readable or (pending is not None and pending()):
            self._close()
            return False
        return True

    def send_file(self, path: Path, sop_class_uid: str, sop_instance_uid: str, context_id: int,
                  message_id: int, fixity: Fixity | None = None) -> Dataset:
        """C-STORE the dataset of the Part 10 file ``path``; the response status (see :meth:`_exchange`).

        With ``fixity`` the bytes are hashed as they are read and the last fragment leaves only
        when they match; otherwise the association is aborted and :class:`SourceDamaged` raised.
        """
        return self._exchange(sop_class_uid, sop_instance_uid, context_id, message_id,
                              lambda sock: self._write_file(sock, path, context_id, fixity))

    def send_bytes(self, dataset: bytes, sop_class_uid: str, sop_instance_uid: str, context_id: int,
                   message_id: int) -> Dataset:
        """C-STORE ``dataset`` (already encoded in the context's transfer syntax)."""
        return self._exchange(sop_class_uid, sop_instance_uid, context_id, message_id,
                              lambda sock: sock.sendall(b"".join(pdus(context_id, dataset, False, True, self._size))))

    def release(self) -> None:
        """A-RELEASE-RQ, wait for the RP (or anything) within the timeout, close."""
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendall(struct.pack(">BBIxxxx", _A_RELEASE_RQ, 0, 4))
            self._read_pdu(sock)
        except (OSError, LinkBroken):
            pass  # closing anyway
        self._close()

    def abort(self) -> None:
        """A-ABORT (source: service user) and close."""
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.sendall(struct.pack(">BBIxxBB", _A_ABORT, 0, 4, 0, 0))
        self._close()

    def _exchange(self, sop_class_uid: str, sop_instance_uid: str, context_id: int, message_id: int,
                  write_dataset: Any) -> Dataset:
        """Send one request and read its response; an empty Dataset (link closed) when none came."""
        sock = self._sock
        if sock is None:
            return Dataset()
        try:
            command = encode_store_command(sop_class_uid, sop_instance_uid, message_id)
            sock.sendall(b"".join(pdus(context_id, command, True, True, self._size)))
            write_dataset(sock)
            fields = self._read_response(sock)
        except SourceDamaged:
            self.abort()
            raise
        except (OSError, LinkBroken):
            self.abort()
            return Dataset()
        if (struct.unpack("<H", fields.get(0x0100, b"\0\0")[:2])[0] != C_STORE_RSP
                or struct.unpack("<H", fields.get(0x0120, b"\0\0")[:2])[0] != message_id or 0x0900 not in fields):
            self.abort()
            return Dataset()
        status = Dataset()
        status.Status = struct.unpack("<H", fields[0x0900][:2])[0]
        comment = fields.get(0x0902, b"").rstrip(b"\x00 ").decode("latin-1")
        if comment:
            status.ErrorComment = comment
        return status

    def _write_file(self, sock: socket.socket, path: Path, context_id: int, fixity: Fixity | None) -> None:
        """Stream the dataset of ``path`` as P-DATA-TF PDUs, read straight into a reused framed buffer.

        Why this shape: every byte is copied once, from the page cache into the buffer's
        fragment slots (``readinto``), then hashed and sent from there as memoryviews;
        no per-fragment ``bytes`` or joined batch is built. The batch holding the
        dataset's last fragment leaves only once the digest matches ``fixity``.
        """
        with open(path, "rb", buffering=0) as f:
            total = os.fstat(f.fileno()).st_size
            offset = _dataset_offset(f.read(_META_HEAD), fixity)
            f.seek(offset)
            remaining = total - offset
            if fixity is not None and remaining != fixity.size:
                raise SourceDamaged(f"{remaining} dataset bytes instead of {fixity.size}")
            digest = hashlib.sha256() if fixity is not None else None
            frames = self._frames()
            while remaining > 0:
                used, remaining = frames.fill(f, remaining, context_id, digest, path)
                if remaining == 0 and digest is not None and fixity is not None \
                        and digest.hexdigest() != fixity.sha256:
                    raise SourceDamaged("the dataset does not match the checksum recorded at ingest")
                sock.sendall(frames.view[:used])

    def _frames(self) -> _Frames:
        if self._framed is None:
            self._framed = _Frames(self._size, max(1, BATCH_BYTES // self._size))
        return self._framed

    def _read_response(self, sock: socket.socket) -> dict[int, bytes]:
        """The command set of the next complete response (a data set after it is read and dropped)."""
        command = bytearray()
        command_done = False
        dataset_follows = True
        while True:
            kind, body = self._read_pdu(sock)
            if kind != _P_DATA_TF:
                raise LinkBroken(f"PDU type 0x{kind:02X} instead of the C-STORE response")
            for control, data in _pdvs(body):
                if control & 0x01:
                    command += data
                    command_done = bool(control & 0x02)
                elif control & 0x02:
                    dataset_follows = False  # the last fragment of a data set nobody asked for
            if command_done:
                fields = parse_command(bytes(command))
                kind_of_set = struct.unpack("<H", fields.get(0x0800, b"\x01\x01")[:2])[0]
                if kind_of_set == NO_DATASET or not dataset_follows:
                    return fields

    def _read_pdu(self, sock: socket.socket) -> tuple[int, bytes]:
        header = _recv_exactly(sock, 6)
        kind, _, length = struct.unpack(">BBI", header)
        if length > _MAX_RESPONSE_BYTES + 6:
            raise LinkBroken(f"a {length}-byte PDU in answer to a C-STORE")
        body = _recv_exactly(sock, length)
        if kind == _A_RELEASE_RQ:
            sock.sendall(struct.pack(">BBIxxxx", _A_RELEASE_RP, 0, 4))
            raise LinkBroken("the peer released the association")
        if kind == _A_ABORT:
            raise LinkBroken("the peer aborted the association")
        return kind, body

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class _Frames:
    """A buffer of ``count`` P-DATA-TF PDUs of ``size`` message bytes each, refilled from a file per batch."""

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self.count = count
        self.buffer = bytearray((_PDU_HEADER.size + size) * count)
        self.view = memoryview(self.buffer)

    def fill(self, f: Any, remaining: int, context_id: int, digest: Any, path: Path) -> tuple[int, int]:
        """Read up to ``count`` fragments of the ``remaining`` bytes of ``f`` into place, framed and hashed.

        Returns (bytes of PDUs to send, bytes still left in the file). The last fragment of the
        dataset carries the last-fragment bit.
        """
        pos = 0
        for _ in range(self.count):
            if remaining == 0:
                break
            length = min(self.size, remaining)
            slot = self.view[pos + _PDU_HEADER.size:pos + _PDU_HEADER.size + length]
            _read_into(f, slot, path)
            if digest is not None:
                digest.update(slot)
            remaining -= length
            _PDU_HEADER.pack_into(self.buffer, pos, _P_DATA_TF, 0, length + 6, length + 2, context_id,
                                  0x02 if remaining == 0 else 0x00)
            pos += _PDU_HEADER.size + length
        return pos, remaining


def _read_into(f: Any, slot: memoryview, path: Path) -> None:
    """Fill ``slot`` from ``f`` (a raw file: ``readinto`` may return short)."""
    done = 0
    while done < len(slot):
        n = f.readinto(slot[done:])
        if not n:
            raise OSError(f"{path} ended early")
        done += n


def _dataset_offset(head: bytes, fixity: Fixity | None) -> int:
    """Where the dataset starts; an unreadable File Meta is damage when the file is being checked."""
    try:
        return dataset_offset(head)
    except MalformedDataset as exc:
        if fixity is None:
            raise
        raise SourceDamaged(f"File Meta Information unreadable: {exc}") from exc


def _pdvs(body: bytes) -> list[tuple[int, bytes]]:
    """(message control header, fragment) of each PDV item of a P-DATA-TF body."""
    out = []
    pos = 0
    while pos + 6 <= len(body):
        (length,) = struct.unpack_from(">I", body, pos)
        if length < 2 or pos + 4 + length > len(body):
            raise LinkBroken("malformed PDV item")
        out.append((body[pos + 5], body[pos + 6:pos + 4 + length]))
        pos += 4 + length
    return out


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    buf = bytearray()
    while len(buf) < count:
        part = sock.recv(count - len(buf))
        if not part:
            raise LinkBroken("the peer closed the connection")
        buf += part
    return bytes(buf)
