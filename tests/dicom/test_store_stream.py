"""The streamed C-STORE receive (channels/dicom/store_stream.py) on the wire, with pynetdicom as SCU.

Data sets go from the socket into the archive's spool and the spool is linked into place;
every other message on the same association is still pynetdicom's; odd but valid PDU
layouts store byte-identical data sets; a broken PDU aborts only its association.
"""

from __future__ import annotations

import gc
import logging
import queue
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.dsutils import encode

from channels.dicom.store_stream import _CLOCK, ASSOCIATION_TURN_SECONDS, BUFFER_BYTES, StoreStream
from engine.archive.flush import IN_FLIGHT
from engine.archive.location import ArchiveLocation
from tests.dicom.store_peer import StoreSCP, associated, dataset_bytes, running_scp

pytestmark = pytest.mark.timeout(120)

CT = "1.2.840.10008.5.1.4.1.1.2"
MWL_FIND = "1.2.840.10008.5.1.4.31"
VERIFICATION = "1.2.840.10008.1.1"


def _ct(corpus: Path) -> Dataset:
    ds = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


_association = associated


def _stored_dataset(scp: StoreSCP, uid: str) -> bytes:
    return dataset_bytes(scp.stored_path(uid))


def _sent_dataset(ds: Dataset, tmp_path: Path) -> bytes:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dataset_bytes(path)


def test_streamed_receive_archives_the_spool_without_a_copy(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_copy(*args: object) -> None:
        raise AssertionError("the streamed spool was copied")

    monkeypatch.setattr(ArchiveLocation, "stage", no_copy)
    ds = _ct(corpus)
    with running_scp(tmp_path / "rb") as scp, _association(scp.port, CT) as assoc:
        assert int(assoc.send_c_store(ds).Status) == 0x0000
    assert _stored_dataset(scp, ds.SOPInstanceUID) == _sent_dataset(ds, tmp_path)
    meta = dcmread(scp.stored_path(ds.SOPInstanceUID)).file_meta
    assert (meta.SourceApplicationEntityTitle, meta.MediaStorageSOPInstanceUID) == ("CT1", ds.SOPInstanceUID)
    assert list((scp.archive / ".incoming").iterdir()) == []


def _reactor_turns(scp: StoreSCP, seconds: float) -> int:
    """How often the (only) server-side association's own thread looked for a DIMSE message in ``seconds``."""
    (assoc,) = scp.server.server.active_associations
    get_msg, turns = assoc.dimse.get_msg, [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        turns[0] += 1
        return get_msg(*args, **kwargs)

    assoc.dimse.get_msg = counted
    time.sleep(seconds)
    assoc.dimse.get_msg = get_msg
    return turns[0]


def test_a_storing_associations_own_thread_turns_every_5_ms_and_still_answers_echo_and_release(
        tmp_path: Path, corpus: Path) -> None:
    with running_scp(tmp_path / "rb") as scp:
        with _association(scp.port, VERIFICATION, CT) as assoc:
            assert int(assoc.send_c_store(_ct(corpus)).Status) == 0x0000
            assert _slowed(scp) is True
            turns = _reactor_turns(scp, 1.0)
            assert int(assoc.send_c_echo().Status) == 0x0000
        assert assoc.is_released
        assert turns <= 1.1 / ASSOCIATION_TURN_SECONDS  # pynetdicom's 1 ms: ~900 a second on a quiet machine
        with _association(scp.port, MWL_FIND, CT) as assoc:  # C-FIND's responses need the fast turns
            assert int(assoc.send_c_store(_ct(corpus)).Status) == 0x0000
            assert _slowed(scp) is False


def test_an_echo_and_the_release_are_answered_without_waiting_for_a_turn(
        tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Turns and idle waits of 3 s: an answer that waited for either would take seconds, not milliseconds.
    monkeypatch.setattr("channels.dicom.store_stream.ASSOCIATION_TURN_SECONDS", 3.0)
    monkeypatch.setattr("channels.dicom.store_stream.IDLE_WAIT_SECONDS", 3.0)
    with running_scp(tmp_path / "rb") as scp:
        with _association(scp.port, VERIFICATION, CT) as assoc:
            assert int(assoc.send_c_store(_ct(corpus)).Status) == 0x0000
            assert _slowed(scp) is True
            time.sleep(0.2)  # both server threads idle: the association's in its turn, the DUL's in its wait
            started = time.monotonic()
            assert int(assoc.send_c_echo().Status) == 0x0000
            echoed = time.monotonic()
            time.sleep(0.2)
            assoc.release()
            released = time.monotonic()
        assert assoc.is_released
        assert echoed - started < 1.0 and released - echoed - 0.2 < 1.0


def _slowed(scp: StoreSCP) -> bool | None:
    """Whether the server-side association's own thread takes the slower turns (None: not registered)."""
    (assoc,) = scp.server.server.active_associations
    stream = _CLOCK.stream_of(assoc)
    return stream.idle_waiting() if stream is not None else None


def test_echo_find_and_store_share_one_association(tmp_path: Path, corpus: Path) -> None:
    first, second = _ct(corpus), _ct(corpus)
    query = Dataset()
    query.PatientName = ""
    with running_scp(tmp_path / "rb") as scp, _association(scp.port, VERIFICATION, MWL_FIND, CT) as assoc:
        assert int(assoc.send_c_echo().Status) == 0x0000
        assert int(assoc.send_c_store(first).Status) == 0x0000
        statuses = [int(status.Status) for status, _ in assoc.send_c_find(query, MWL_FIND)]
        assert statuses == [0x0000]  # no worklist items: only the final response
        assert int(assoc.send_c_store(second).Status) == 0x0000
        assert int(assoc.send_c_echo().Status) == 0x0000
    assert {row.sop_instance_uid for row in scp.instances()} == {first.SOPInstanceUID, second.SOPInstanceUID}


def _pdu(*pdvs: tuple[int, int, bytes]) -> bytes:
    body = b"".join(struct.pack(">IBB", len(data) + 2, cx, control) + data for cx, control, data in pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def _store_command(message_id: int, sop_instance: str) -> bytes:
    command = Dataset()
    command.AffectedSOPClassUID = CT
    command.CommandField = 0x0001
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_instance
    body = encode(command, True, True)
    assert body is not None
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def test_a_command_split_over_pdus_and_odd_fragments_store_byte_identical(tmp_path: Path, corpus: Path) -> None:
    ds = _ct(corpus)
    data = _sent_dataset(ds, tmp_path)
    command = _store_command(9, ds.SOPInstanceUID)
    with running_scp(tmp_path / "rb") as scp, _association(scp.port, CT) as assoc:
        cx = assoc.accepted_contexts[0].context_id
        pdus = [
            _pdu((cx, 0x01, command[:10])),  # command, not the last fragment
            _pdu((cx, 0x03, command[10:]), (cx, 0x00, data[:1])),  # its end and one byte of the data set
            _pdu((cx, 0x00, b""), (cx, 0x00, data[1:777]), (cx, 0x00, data[777:-3])),
            _pdu((cx, 0x02, data[-3:])),
        ]
        received: queue.Queue[Any] = queue.Queue()
        assoc.bind(evt.EVT_DIMSE_RECV, lambda event: received.put(event.message.command_set))
        assoc.dul.socket.socket.sendall(b"".join(pdus))  # as one stream: PDUs straddle reads
        rsp = received.get(timeout=30)
        assert (int(rsp.CommandField), int(rsp.Status), int(rsp.MessageIDBeingRespondedTo)) == (0x8001, 0x0000, 9)
    assert _stored_dataset(scp, ds.SOPInstanceUID) == data


def test_a_pdv_overrunning_its_pdu_aborts_that_association_only(tmp_path: Path, corpus: Path) -> None:
    ds = _ct(corpus)
    with running_scp(tmp_path / "rb") as scp:
        with _association(scp.port, CT) as assoc:
            cx = assoc.accepted_contexts[0].context_id
            broken = _pdu((cx, 0x03, _store_command(1, ds.SOPInstanceUID)))[:-4] + struct.pack(">I", 1 << 20)
            body = broken[6:]
            assoc.dul.socket.socket.sendall(struct.pack(">BBI", 0x04, 0, len(body) + 6) + body
                                            + struct.pack(">IBB", 1000, cx, 0x00))
            deadline = time.monotonic() + 10
            while assoc.is_established and time.monotonic() < deadline:
                time.sleep(0.05)
            assert assoc.is_aborted
        with _association(scp.port, CT) as assoc:
            assert int(assoc.send_c_store(ds).Status) == 0x0000
    assert [row.sop_instance_uid for row in scp.instances()] == [ds.SOPInstanceUID]


def test_pynetdicom_logging_at_info_keeps_its_own_receive_path(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies: list[object] = []
    stage = ArchiveLocation.stage

    def counted(self: ArchiveLocation, head: bytes, body: Any) -> Any:
        copies.append(head)
        return stage(self, head, body)

    monkeypatch.setattr(ArchiveLocation, "stage", counted)
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    logger.setLevel(logging.INFO)
    ds = _ct(corpus)
    try:
        with running_scp(tmp_path / "rb") as scp, _association(scp.port, CT) as assoc:
            assert int(assoc.send_c_store(ds).Status) == 0x0000
    finally:
        logger.setLevel(level)
    assert len(copies) == 1  # pynetdicom spooled it: the archive file is a copy
    assert _stored_dataset(scp, ds.SOPInstanceUID) == _sent_dataset(ds, tmp_path)


def test_the_ae_announces_the_store_buffer_as_maximum_pdu_and_large_pdus_store(tmp_path: Path, corpus: Path) -> None:
    ds = _ct(corpus)
    with running_scp(tmp_path / "rb") as scp, _association(scp.port, CT) as assoc:
        assert assoc.acceptor.maximum_length == BUFFER_BYTES  # a 512 KB image in 2-3 PDUs, not 32
        assert int(assoc.send_c_store(ds).Status) == 0x0000
    assert _stored_dataset(scp, ds.SOPInstanceUID) == _sent_dataset(ds, tmp_path)


def _until(condition: Any, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_an_image_is_in_flight_from_its_command_until_answered_or_abandoned(tmp_path: Path, corpus: Path) -> None:
    """What decides whether a store hands its flushes and hashes to other threads (engine.archive.flush)."""
    first, second = _ct(corpus), _ct(corpus)
    with running_scp(tmp_path / "rb") as scp:
        assert IN_FLIGHT.count() == 0
        with _association(scp.port, CT) as assoc:
            cx = assoc.accepted_contexts[0].context_id
            data = _sent_dataset(first, tmp_path)
            received: queue.Queue[Any] = queue.Queue()
            assoc.bind(evt.EVT_DIMSE_RECV, lambda event: received.put(event.message.command_set))
            sock = assoc.dul.socket.socket
            sock.sendall(_pdu((cx, 0x03, _store_command(1, first.SOPInstanceUID)), (cx, 0x00, data[:100])))
            assert _until(lambda: IN_FLIGHT.count() == 1)
            sock.sendall(_pdu((cx, 0x02, data[100:])))
            assert int(received.get(timeout=30).Status) == 0x0000
            assert _until(lambda: IN_FLIGHT.count() == 0)
        with _association(scp.port, CT) as assoc:  # aborted mid-data-set
            cx = assoc.accepted_contexts[0].context_id
            assoc.dul.socket.socket.sendall(_pdu((cx, 0x03, _store_command(1, second.SOPInstanceUID)),
                                                 (cx, 0x00, b"\x08\x00")))
            assert _until(lambda: IN_FLIGHT.count() == 1)
            assoc.abort()
        assert _until(lambda: IN_FLIGHT.count() == 0)
    assert [row.sop_instance_uid for row in scp.instances()] == [first.SOPInstanceUID]


def test_a_store_command_without_its_data_set_type_aborts_the_association_cleanly(
    tmp_path: Path, corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pynetdicom's decoding of such a command raised in the DUL's thread, which ended with a traceback."""
    command = Dataset()
    command.AffectedSOPClassUID, command.CommandField, command.MessageID = CT, 0x0001, 1
    command.Priority, command.AffectedSOPInstanceUID = 0, "1.2.3.4"  # no CommandDataSetType (PS3.7: mandatory)
    body = encode(command, True, True)
    assert body is not None
    raw = struct.pack("<HHII", 0, 0, 4, len(body)) + body
    ds = _ct(corpus)
    with running_scp(tmp_path / "rb") as scp:
        with _association(scp.port, CT) as assoc:
            cx = assoc.accepted_contexts[0].context_id
            assoc.dul.socket.socket.sendall(_pdu((cx, 0x03, raw), (cx, 0x02, b"\x08\x00\x18\x00UI\x08\x001.2.3.4\x00")))
            assert _until(lambda: assoc.is_aborted)
        with _association(scp.port, CT) as assoc:
            assert int(assoc.send_c_store(ds).Status) == 0x0000
        assert list((scp.archive / ".incoming").iterdir()) == []
    assert "without Command Data Set Type" in caplog.text
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


def _live_streams() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, StoreStream))


def test_an_ended_association_frees_its_stream_and_buffer(tmp_path: Path, corpus: Path) -> None:
    """Each storing association's StoreStream (a BUFFER_BYTES buffer, the association it reads) is freed
    once the association is over. The reactor clock's registry held them for good: a long-running engine
    or receive worker grew ~0.45 MB an association (RSS 79 -> 759 MB over 3,000 associations)."""
    with running_scp(tmp_path / "rb") as scp:
        before = _live_streams()
        for _ in range(8):
            with _association(scp.port, CT, VERIFICATION) as assoc:
                assert int(assoc.send_c_store(_ct(corpus)).Status) == 0x0000
        deadline = time.monotonic() + 10
        while scp.server.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scp.server.server.active_associations == []
        assert _live_streams() <= before
