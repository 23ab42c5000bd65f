"""The fhir-history-retention job: bounds fhir_versions, never removes a version the API serves."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from engine.config.models import FhirHistoryConfig
from engine.domain.tables import procedure_steps
from engine.fhir.projector import project_all
from engine.fhir.retention import Retention, history_jobs, prune_all
from engine.fhir.search import history, vread
from engine.fhir.tables import fhir_resources, fhir_versions
from engine.store.database import Database
from tests.fhir.conftest import FhirHttp, InProcessEngine
from tests.fhir.messages import orm, oru
from tests.fhir.test_diagnostic_report import SETTINGS, UID, _apply, _report, _seed

LATER = datetime.now(UTC) + timedelta(days=30)


def _versions(db: Database) -> dict[tuple[str, str], list[int]]:
    """Every kept version, by resource."""
    v, r = fhir_versions.c, fhir_resources.c
    rows = db.read(lambda c: c.execute(select(r.res_type, r.res_id, v.version_id).join(fhir_resources)
                                       .order_by(r.res_type, r.res_id, v.version_id)).all())
    found: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        found.setdefault((row.res_type, row.res_id), []).append(int(row.version_id))
    return found


def _changes(db: Database, statuses: tuple[str, ...]) -> None:
    """An order and a report, each step status a new ImagingStudy/ServiceRequest version, three report versions."""
    db.writer.call(_seed)
    _apply(db, _report("P", "Wet read."))
    project_all(db, SETTINGS)
    for n, status in enumerate(statuses):
        db.writer.call(lambda c, s=status: c.execute(update(procedure_steps).values(status=s)))
        _apply(db, _report("F" if n == 0 else "C", f"Text {n}."), n + 1)
        project_all(db, SETTINGS)


def test_only_current_versions_stay_except_for_reports(db: Database) -> None:
    _changes(db, ("COMPLETED", "CANCELED"))
    before = _versions(db)
    assert before[("ServiceRequest", "1")] == [1, 2, 3] and before[("DiagnosticReport", "1")] == [1, 2, 3]
    assert before[("ImagingStudy", UID)] == [1, 2]
    deleted = prune_all(db, Retention(), LATER)
    after = _versions(db)
    assert after[("ServiceRequest", "1")] == [3] and after[("ImagingStudy", UID)] == [2]
    assert after[("Patient", "1")] == [1]
    assert after[("DiagnosticReport", "1")] == [1, 2, 3]  # every report version is served
    assert deleted == 3
    assert prune_all(db, Retention(), LATER) == 0


def test_keep_versions_and_keep_age_are_honoured(db: Database) -> None:
    _changes(db, ("COMPLETED", "CANCELED"))
    assert prune_all(db, Retention(keep_versions=2), LATER) == 1
    assert _versions(db)[("ServiceRequest", "1")] == [2, 3]
    assert prune_all(db, Retention(keep_age=timedelta(days=60)), LATER) == 0  # all younger than 60 days
    assert prune_all(db, Retention(keep_age=timedelta(days=1)), LATER) == 2


def test_small_batches_finish_the_pass(db: Database) -> None:
    _changes(db, ("ARRIVED", "COMPLETED", "CANCELED", "SCHEDULED"))
    earlier = sum(len(v) - 1 for k, v in _versions(db).items() if k[0] != "DiagnosticReport")
    assert earlier == 3 + 2  # ServiceRequest 1-3 (4 is current), ImagingStudy 1-2
    assert prune_all(db, Retention(), LATER, batch=1) == earlier
    assert {k: v[-1:] == v for k, v in _versions(db).items() if k[0] != "DiagnosticReport"} == {
        ("ServiceRequest", "1"): True, ("ImagingStudy", UID): True, ("Patient", "1"): True}
    assert _versions(db)[("DiagnosticReport", "1")] == [1, 2, 3, 4, 5]


def test_the_job_comes_from_the_configuration(db: Database) -> None:
    _changes(db, ("COMPLETED",))
    (job,) = history_jobs(db, FhirHistoryConfig(keep_versions=1, keep_days=0, interval_seconds=60))
    assert job.id == "fhir-history-retention" and job.interval_seconds == 60
    assert "current version" in job.description
    assert job.run() == 1  # ServiceRequest v1 (written a moment ago: no age is kept)
    assert db.read(lambda c: c.execute(select(func.count()).select_from(fhir_versions)).scalar_one()) == 1 + 1 + 1 + 2
    assert _versions(db)[("DiagnosticReport", "1")] == [1, 2]


@pytest.fixture(scope="module")
def pruned(engine: InProcessEngine) -> dict[str, str]:
    """An order, MPPS-less study with two versions, a report with three; then the job runs."""
    uid = "1.2.826.0.1.3680043.10.992.1"
    assert engine.send(orm(501, "KEEP1", "KEPT^KAY", study_uid=uid)) == ["AA"]
    assert engine.report(oru(501, "K1", "P", "Wet read."), oru(501, "K2", "F", "Final."),
                         oru(501, "K3", "C", "Corrected.")) == ["AA", "AA", "AA"]
    engine.settle()
    assert engine.send(orm(501, "KEEP1", "KEPT^KAY", control="CA", status="CA", study_uid=uid)) == ["AA"]
    engine.settle()
    assert engine.runtime is not None and engine.runtime.db is not None
    (job,) = history_jobs(engine.runtime.db, FhirHistoryConfig())
    assert job.run() >= 2
    return {"study": uid}


def test_the_api_still_serves_every_report_version_and_every_current_version(
        pruned: dict[str, str], engine: InProcessEngine, api: FhirHttp) -> None:
    report = api.get("DiagnosticReport", params={"identifier": "ACC501"}).json()["entry"][0]["resource"]
    listed = api.get(f"DiagnosticReport/{report['id']}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in listed["entry"]] == ["3", "2", "1"]
    for n in ("1", "2", "3"):
        assert api.get(f"DiagnosticReport/{report['id']}/_history/{n}").status_code == 200
    study = api.get(f"ImagingStudy/{pruned['study']}").json()
    assert study["status"] == "cancelled" and study["meta"]["versionId"] == "2"
    assert api.get(f"ImagingStudy/{pruned['study']}/_history/2").json() == study
    assert [e["resource"]["meta"]["versionId"] for e in
            api.get(f"ImagingStudy/{pruned['study']}/_history").json()["entry"]] == ["2"]
    assert api.get(f"ImagingStudy/{pruned['study']}/_history/1").status_code == 404
    request = report["basedOn"][0]["reference"]
    assert api.get(request).status_code == 200 and api.get(f"{request}/_history").json()["total"] == 1


def test_search_sees_only_what_is_kept(db: Database) -> None:
    _changes(db, ("COMPLETED",))
    prune_all(db, Retention(), LATER)
    assert db.read(lambda c: vread(c, "ServiceRequest", "1", 1)) is None
    kept = db.read(lambda c: history(c, "DiagnosticReport", "1", 10))
    assert kept is not None and [json.loads(s.json)["status"] for s in kept] == ["final", "preliminary"]


