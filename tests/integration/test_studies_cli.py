"""``radbridge run`` stores what storescu sends; ``radbridge studies list|show`` read it, audited."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import EngineProcess, free_port, need
from tests.dicom.conftest import DCMTK
from tests.dicom.store_peer import storescu
from tests.integration.conftest import cli_json, create_store, sqlite_rows, write_engine_yaml


def _stored_study(engine: EngineProcess, corpus: Path) -> None:
    need(DCMTK, "DCMTK not installed")
    port = free_port()
    write_engine_yaml(engine, f"dicom:\n  port: {port}\n  ae_title: RADBRIDGE\n")
    engine.start(wait_port=port)
    done = storescu(port, sorted((corpus / "dicom" / "study_dcm4che_MR_DOE_J1").glob("*.dcm")))
    assert done.returncode == 0, done.stderr[-2000:]
    engine.stop()


def test_studies_list_and_show_read_the_index_and_are_audited(engine_process: EngineProcess, corpus: Path) -> None:
    _stored_study(engine_process, corpus)
    (row,) = cli_json(engine_process, "studies", "list")
    study_uid = row["study_instance_uid"]
    assert (row["patient_id"], row["number_of_instances"], row["scheduled"]) == ("583295", 16, False)
    assert cli_json(engine_process, "studies", "list", "--unscheduled")[0]["study_instance_uid"] == study_uid
    detail = cli_json(engine_process, "studies", "show", study_uid)
    instances = [i for s in detail["series"] for i in s["instances"]]
    assert len(instances) == 16 and {i["received_from_ae"] for i in instances} == {"CT1"}
    assert all((engine_process.data_dir / "archive" / i["path"]).is_file() for i in instances)
    db = engine_process.data_dir / "radbridge.db"
    events = sqlite_rows(db, "SELECT action, object_type, object_id, detail FROM audit_events ORDER BY id")
    assert [(a, t) for a, t, _, _ in events] == [("study.list", "query"), ("study.list", "query"),
                                                ("study.show", "study")]
    assert events[2][2] == study_uid and json.loads(events[0][3])["study_instance_uids"] == [study_uid]


def test_studies_show_of_an_unknown_study_fails_without_an_audit_event(engine_process: EngineProcess) -> None:
    create_store(engine_process)
    result = engine_process.cli("studies", "show", "1.2.3")
    assert result.returncode == 1 and "no study 1.2.3" in result.stderr
    db = engine_process.data_dir / "radbridge.db"
    assert sqlite_rows(db, "SELECT COUNT(*) FROM audit_events") == [(0,)]
