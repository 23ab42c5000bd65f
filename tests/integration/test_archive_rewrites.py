"""A rewritten study (a late order reconciled in the background) reaches the secondary location too.

``radbridge run`` with two locations, DCMTK storescu as the modality, a real MLLP client as the
RIS, then ``archive verify`` and ``archive restore`` as an operator runs them: the secondary must
hold the corrected version, so verify finds nothing stale and restore brings back the
corrected file, not the version received before the order.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread

from tests.conftest import ROOT, EngineProcess, free_port, need, wait_for_port
from tests.integration.conftest import sqlite_rows
from tests.integration.test_reconcile_e2e import _corpus_study, orm, send, storescu, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def engine(engine_process: EngineProcess) -> Iterator[tuple[EngineProcess, int, int]]:
    need(shutil.which("storescu") is not None, "DCMTK storescu not installed")
    mllp, dicom = free_port(), free_port()
    config = {
        "data_dir": str(engine_process.data_dir), "mappings_dir": str(ROOT / "mappings"),
        "dicom": {"port": dicom}, "reconcile": {"poll_interval_seconds": 0.3},
        "outbox": {"poll_interval_seconds": 0.2},
        "archive": {"secondary": str(engine_process.data_dir.parent / "second"), "verify_sample": 0,
                    "replication_retry": {"initial_seconds": 0.2, "max_seconds": 0.2}},
    }
    (engine_process.config_dir / "engine.yaml").write_text(yaml.safe_dump(config))
    (engine_process.config_dir / "channels" / "ris.yaml").write_text(f"""
name: ris-inbound
source: {{type: mllp, port: {mllp}}}
accept: {{message_types: ["ADT^*", "ORM^O01"]}}
mapping: [adt-to-patient, order-to-worklist]
handlers: [patients, orders]
""")
    engine_process.start(wait_port=mllp)
    wait_for_port(dicom, proc=engine_process.proc)
    yield engine_process, mllp, dicom


def _copies(engine: EngineProcess) -> list[tuple[str, int, str, str]]:
    """(path, versions, primary_state, secondary_state) of every instance."""
    return sqlite_rows(engine.data_dir / "radbridge.db",
                       "SELECT i.path, i.versions, c.primary_state, c.secondary_state FROM instances i"
                       " JOIN instance_copies c ON c.instance_pk = i.id ORDER BY i.id")


def test_a_reconciled_study_reaches_the_secondary_and_restore_brings_back_the_corrected_version(
        engine: tuple[EngineProcess, int, int], corpus: Path) -> None:
    proc, mllp, dicom = engine
    primary, secondary = proc.data_dir / "archive", proc.data_dir.parent / "second"
    storescu(dicom, _corpus_study(corpus))
    wait_for(lambda: {r[3] for r in _copies(proc)} == {"VERIFIED"})
    assert send(mllp, orm(7, "583295", "MOF5026")) == "AA"  # the late order: the study is rewritten
    wait_for(lambda: {(r[1], r[3]) for r in _copies(proc)} == {(2, "VERIFIED")})
    proc.stop()
    for path, _, _, _ in _copies(proc):
        assert (secondary / path).read_bytes() == (primary / path).read_bytes()
    checked = proc.cli("archive", "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lost = _copies(proc)[0][0]
    (primary / lost).unlink()
    restored = proc.cli("archive", "restore")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert str(dcmread(primary / lost).PatientName) == "DÖE^JOHN"  # the order's name, not the modality's
