"""C-STORE response statuses from the peer decide delivered / retried / dead letter.

The peer is a pynetdicom Storage SCP in this process answering a scripted
status sequence; radbridge (``radbridge run``) forwards what DCMTK storescu
stored. Each test checks the outbox row the engine leaves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.conftest import EngineProcess, need
from tests.dicom.conftest import DCMTK
from tests.dicom.store_peer import storescu
from tests.integration.forward_peer import deliveries, start_forwarding_engine, wait_until

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _dcmtk() -> None:
    need(DCMTK, "DCMTK (storescu) not installed")


class ScriptedSCP:
    """Answers C-STOREs with ``statuses`` in turn (the last one from then on)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[str] = []
        self.associations = 0
        self._lock = threading.Lock()

    def on_store(self, event: Any) -> int:
        with self._lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            return self.statuses[min(len(self.received), len(self.statuses)) - 1]

    def on_accepted(self, event: Any) -> None:
        with self._lock:
            self.associations += 1


@contextmanager
def scripted_scp(statuses: list[int]) -> Iterator[tuple[ScriptedSCP, int]]:
    script = ScriptedSCP(statuses)
    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.require_called_aet = True  # an association called by another AE title is rejected
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, script.on_store), (evt.EVT_ACCEPTED, script.on_accepted)])
    try:
        yield script, int(server.server_address[1])
    finally:
        server.shutdown()


def _one(corpus: Path) -> Path:
    return corpus / "dicom" / "single" / "MR_small.dcm"


def test_out_of_resources_is_retried_then_delivered(engine_process: EngineProcess, corpus: Path) -> None:
    with scripted_scp([0xA700, 0xA701, 0x0000]) as (script, port):
        rb = start_forwarding_engine(engine_process, port, called="PACS")
        assert storescu(rb, [_one(corpus)]).returncode == 0
        wait_until(lambda: deliveries(engine_process)[0][1] == "SENT", what="delivery after 0xA7xx")
        (row,) = deliveries(engine_process)
        assert row[2] == 3 and row[4].startswith("0x0000")
        assert len(script.received) == 3


@pytest.mark.parametrize("status", [0xA900, 0xC000, 0x0122])
def test_a_permanent_failure_is_a_dead_letter_after_one_attempt(
        engine_process: EngineProcess, corpus: Path, status: int) -> None:
    with scripted_scp([status]) as (script, port):
        rb = start_forwarding_engine(engine_process, port, called="PACS")
        assert storescu(rb, [_one(corpus)]).returncode == 0
        wait_until(lambda: deliveries(engine_process)[0][1] == "ERROR", what="dead letter")
        (row,) = deliveries(engine_process)
        assert row[2] == 1 and row[3].startswith(f"0x{status:04X}")
        assert len(script.received) == 1


def test_a_warning_is_delivered(engine_process: EngineProcess, corpus: Path) -> None:
    with scripted_scp([0xB000]) as (_, port):
        rb = start_forwarding_engine(engine_process, port, called="PACS")
        assert storescu(rb, [_one(corpus)]).returncode == 0
        wait_until(lambda: deliveries(engine_process)[0][1] == "SENT", what="delivery with a warning")
        assert deliveries(engine_process)[0][4].startswith("0xB000 warning")


def test_a_rejected_association_is_retried(engine_process: EngineProcess, corpus: Path) -> None:
    """The peer rejects the association (we call it by another AE title): retried, never a dead letter at once."""
    with scripted_scp([0x0000]) as (script, port):
        rb = start_forwarding_engine(engine_process, port, called="NOTPACS")
        assert storescu(rb, [_one(corpus)]).returncode == 0
        wait_until(lambda: deliveries(engine_process)[0][2] >= 2, what="retried attempts")
        row = deliveries(engine_process)[0]
        assert row[1] == "QUEUED" and "rejected" in row[3]
        assert script.received == []
