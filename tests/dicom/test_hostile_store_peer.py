"""A hostile C-STORE peer on the wire (pynetdicom as SCU, PDUs written by hand on its socket).

Found by the dicomcorpus campaign: data set fragments on a presentation context other than
their command's were appended to the data set and stored with success; an association that
ended mid-data-set left its spool file in ``.incoming`` for ten minutes. Now the first is a
protocol error (the association is aborted, nothing stored) and neither leaves a file.
"""

from __future__ import annotations

import logging
import queue
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode

from tests.dicom.store_peer import StoreSCP, drain_unsolicited, running_scp
from tests.dicom.test_store_stream import _pdu, _sent_dataset, _store_command

pytestmark = pytest.mark.timeout(120)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def _ct() -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _associate(port: int, *classes: str) -> Any:
    ae = AE(ae_title="CT1")
    for sop_class in classes:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    return assoc


def _ended(assoc: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    return not assoc.is_established


def _spooled(scp: StoreSCP) -> list[Path]:
    return list((scp.archive / ".incoming").glob("rx-*"))


def _next_store_succeeds(scp: StoreSCP) -> None:
    assoc = _associate(scp.port, CT)
    try:
        ds = _ct()
        assert int(assoc.send_c_store(ds).Status) == 0x0000
    finally:
        assoc.release()
    assert ds.SOPInstanceUID in {row.sop_instance_uid for row in scp.instances()}


@pytest.mark.parametrize("wrong", ["another accepted context", "a context never proposed"])
def test_a_data_set_fragment_on_another_context_than_its_command_aborts_and_stores_nothing(
        tmp_path: Path, wrong: str) -> None:
    ds = _ct()
    data = _sent_dataset(ds, tmp_path)
    with running_scp(tmp_path / "rb") as scp:
        assoc = _associate(scp.port, CT, MR)
        cx, other = sorted(assoc._accepted_cx)
        stray = other if wrong == "another accepted context" else 99
        assoc.dul.socket.socket.sendall(
            _pdu((cx, 0x03, _store_command(1, ds.SOPInstanceUID)))
            + _pdu((cx, 0x00, data[:500]))
            + _pdu((stray, 0x02, data[500:]))  # the rest of the data set, on the wrong context
        )
        assert _ended(assoc) and assoc.is_aborted
        assert scp.instances() == [] and _spooled(scp) == []
        _next_store_succeeds(scp)


@pytest.mark.parametrize("ending", ["A-ABORT", "TCP close"])
def test_an_association_ending_mid_data_set_leaves_no_file_and_the_next_store_succeeds(
        tmp_path: Path, ending: str) -> None:
    ds = _ct()
    data = _sent_dataset(ds, tmp_path)
    with running_scp(tmp_path / "rb") as scp:
        assoc = _associate(scp.port, CT)
        cx = sorted(assoc._accepted_cx)[0]
        sock = assoc.dul.socket.socket
        sock.sendall(_pdu((cx, 0x03, _store_command(1, ds.SOPInstanceUID))) + _pdu((cx, 0x00, data[:500])))
        deadline = time.monotonic() + 10
        while not _spooled(scp) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_spooled(scp)) == 1  # the data set was being received
        if ending == "A-ABORT":
            assoc.abort()
        else:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        deadline = time.monotonic() + 10
        while _spooled(scp) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _spooled(scp) == [] and scp.instances() == []
        _next_store_succeeds(scp)


def _command_without_data_set(message_id: int, sop_instance: str) -> bytes:
    command = Dataset()
    command.AffectedSOPClassUID = CT
    command.CommandField = 0x0001
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0101  # "no data set": a C-STORE-RQ must have one
    command.AffectedSOPInstanceUID = sop_instance
    body = encode(command, True, True)
    assert body is not None
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def test_a_c_store_request_without_a_data_set_gets_cannot_understand_and_no_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with running_scp(tmp_path / "rb") as scp:
        assoc = _associate(scp.port, CT)
        responses: queue.Queue[Any] = queue.Queue()
        assoc.bind(evt.EVT_DIMSE_RECV, lambda event: responses.put(event.message.command_set))
        cx = sorted(assoc._accepted_cx)[0]
        with caplog.at_level(logging.INFO):
            assoc.dul.socket.socket.sendall(_pdu((cx, 0x03, _command_without_data_set(7, generate_uid()))))
            rsp = responses.get(timeout=30)
        assert (int(rsp.CommandField), int(rsp.Status), int(rsp.MessageIDBeingRespondedTo)) == (0x8001, 0xC210, 7)
        assert "Traceback" not in caplog.text and "no data set" in caplog.text
        assert assoc.is_established  # the association stays usable
        drain_unsolicited(assoc)
        ds = _ct()
        assert int(assoc.send_c_store(ds).Status) == 0x0000
        assoc.release()
        assert scp.instances()[0].sop_instance_uid == ds.SOPInstanceUID
