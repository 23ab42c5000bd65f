"""A C-STORE-RQ with empty Affected SOP Class and Instance UIDs (channels/dicom/invalid_store.py, spool.py).

pydicom's ``nested_priv_SQ.dcm`` has an empty SOP Class and Instance UID in its File Meta
Information, and a sender that copies them into the command sends such a request. It reached
pynetdicom's message decoding (its own receive path, or a command the streamed receive hands
over), which raised in the DUL's thread: no answer, the connection closed, the spool left in
``.incoming``. It is now refused with a status and quarantined, and the association goes on.
"""

from __future__ import annotations

import logging
import queue
import struct
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dsutils import encode

from tests.dicom.store_peer import StoreSCP, associated, dataset_bytes, drain_unsolicited, running_scp

pytestmark = pytest.mark.timeout(120)

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
MISSING_UID = 0xC220  # what channels.dicom.storage answers a data set without a valid SOP Instance UID


def _empty_uids_command(*, message_id: bool = True, other_group: bool = False) -> bytes:
    command = Dataset()
    command.AffectedSOPClassUID = ""
    command.CommandField = 0x0001
    if message_id:
        command.MessageID = 1
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = ""
    body = encode(command, True, True)
    assert body is not None
    if other_group:  # not a command element (PS3.7 6.3.1): radbridge's reader leaves it to pynetdicom
        body += struct.pack("<HHI", 0x0008, 0x0016, 0)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _pdu(*pdvs: tuple[int, int, bytes]) -> bytes:
    body = b"".join(struct.pack(">IBB", len(data) + 2, cx, control) + data for cx, control, data in pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def _nested_priv_sq() -> bytes:
    path = get_testdata_file("nested_priv_SQ.dcm")
    assert path is not None
    return dataset_bytes(Path(path))


def _association(port: int) -> AbstractContextManager[Any]:
    return associated(port, CT, VERIFICATION, transfer_syntax=IMPLICIT)


def _send(assoc: Any, abstract_syntax: str, command: bytes, wait: float = 10) -> int | None:
    """Send ``command`` and nested_priv_SQ's data set raw; the response's status (None: no response)."""
    cx = next(c.context_id for c in assoc.accepted_contexts if c.abstract_syntax == abstract_syntax)
    responses: queue.Queue[Any] = queue.Queue()
    assoc.bind(evt.EVT_DIMSE_RECV, lambda event: responses.put(event.message.command_set))
    assoc.dul.socket.socket.sendall(_pdu((cx, 0x03, command), (cx, 0x02, _nested_priv_sq())))
    try:
        return int(responses.get(timeout=wait).Status)
    except queue.Empty:
        return None
    finally:
        assoc.unbind(evt.EVT_DIMSE_RECV, assoc.get_handlers(evt.EVT_DIMSE_RECV)[-1][0])
        drain_unsolicited(assoc)


def _spooled(scp: StoreSCP) -> list[Path]:
    return list((scp.archive / ".incoming").iterdir())


def _store_ct(assoc: Any, corpus: Path) -> int:
    return int(assoc.send_c_store(dcmread(corpus / "dicom" / "single" / "CT_small.dcm")).Status)


def _refused_kept_and_next_stored(scp: StoreSCP, assoc: Any, status: int | None, corpus: Path) -> None:
    assert status == MISSING_UID
    (kept,) = scp.quarantined()
    assert (kept.status, kept.sop_class_uid, kept.sop_instance_uid) == (MISSING_UID, "", "")
    assert dataset_bytes(scp.config.quarantine_dir() / kept.path) == _nested_priv_sq()
    assert _spooled(scp) == []
    assert _store_ct(assoc, corpus) == 0x0000  # the same association goes on
    assert len(scp.instances()) == 1


@pytest.mark.parametrize(
    ("abstract_syntax", "other_group"),
    [(CT, False), (CT, True), (VERIFICATION, False)],
    ids=["streamed", "command-handed-to-pynetdicom", "on-the-verification-context"],
)
def test_empty_uids_are_refused_kept_and_the_association_goes_on(
    tmp_path: Path, corpus: Path, abstract_syntax: str, other_group: bool
) -> None:
    with running_scp(tmp_path / "rb") as scp, _association(scp.port) as assoc:
        status = _send(assoc, abstract_syntax, _empty_uids_command(other_group=other_group))
        _refused_kept_and_next_stored(scp, assoc, status, corpus)


def test_pynetdicoms_own_receive_path_refuses_empty_uids_too(tmp_path: Path, corpus: Path) -> None:
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    logger.setLevel(logging.INFO)  # the streamed receive is not installed (store_stream.install_store_stream)
    try:
        with running_scp(tmp_path / "rb") as scp, _association(scp.port) as assoc:
            status = _send(assoc, CT, _empty_uids_command())
            _refused_kept_and_next_stored(scp, assoc, status, corpus)
    finally:
        logger.setLevel(level)


def test_without_a_message_id_the_association_is_aborted_and_nothing_stays(tmp_path: Path, corpus: Path) -> None:
    with running_scp(tmp_path / "rb") as scp:
        with _association(scp.port) as assoc:
            assert _send(assoc, CT, _empty_uids_command(message_id=False, other_group=True), wait=2) is None
            deadline = time.monotonic() + 10
            while assoc.is_established and time.monotonic() < deadline:
                time.sleep(0.05)
            assert assoc.is_aborted
        assert _spooled(scp) == [] and scp.quarantined() == []
        with _association(scp.port) as assoc:
            assert _store_ct(assoc, corpus) == 0x0000
