"""FHIR push to a real FHIR server (sekmet-fhir, SMART client credentials enforced), end to end.

HL7 over MLLP (python-hl7) and MPPS (pynetdicom) in; the projector stores versions; the
outbox's ``fhir`` destination upserts them on sekmet with conditional updates, with a
token from sekmet's own OAuth 2.0 token endpoint.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine.store.schema import outbox
from tests.conftest import ROOT
from tests.fhir.conftest import InProcessEngine
from tests.fhir.messages import c_store, mpps_performed, orm, oru
from tests.fhir.sekmet import CLIENT_ID, CLIENT_SECRET, Sekmet

DESTINATION = "ehr-fhir"
SECRET_ENV = "RADBRIDGE_TEST_EHR_FHIR_SECRET"
UID = "urn:dicom:uid"


@dataclass
class PushEngine(InProcessEngine):
    """The FHIR tests' engine with a ``fhir`` destination toward ``sekmet``."""

    sekmet: Sekmet | None = None
    poll_interval: float = 0.2  # the outbox's fallback poll

    def write_config(self, extra_http: str = "") -> Path:
        config_dir = super().write_config(extra_http)
        assert self.sekmet is not None
        path = config_dir / "engine.yaml"
        path.write_text(path.read_text() + f"""outbox: {{poll_interval_seconds: {self.poll_interval}}}
destinations:
  - name: {DESTINATION}
    type: fhir
    base_url: {self.sekmet.base}
    resource_types: [ImagingStudy, DiagnosticReport]
    auth:
      type: client_credentials
      token_url: {self.sekmet.token_url}
      client_id: {CLIENT_ID}
      client_secret_env: {SECRET_ENV}
      scope: system/*.cruds
    retry: {{initial_seconds: 0.2, multiplier: 1.5, max_seconds: 1.0, max_attempts: 1000}}
    timeout_seconds: 5
""")
        return config_dir

    def rows(self, key: str = "") -> list[Any]:
        """This destination's outbox rows (of one ordering key), oldest first."""
        assert self.runtime is not None and self.runtime.db is not None
        query = select(outbox).where(outbox.c.destination == DESTINATION).order_by(outbox.c.id)
        if key:
            query = query.where(outbox.c.ordering_key == key)
        return list(self.runtime.db.read(lambda c: c.execute(query).all()))

    def delivered(self, timeout: float = 30.0) -> list[Any]:
        """Wait until the projector is idle and no row of the destination is QUEUED; all rows."""
        deadline = time.monotonic() + timeout
        while True:
            self.settle()
            rows = self.rows()
            if all(r.status != "QUEUED" for r in rows):
                return rows
            assert time.monotonic() < deadline, [(r.id, r.status, r.last_error) for r in rows]
            time.sleep(0.1)

    def token_requests(self) -> int:
        assert self.runtime is not None and self.runtime.worker is not None
        return int(self.runtime.worker.routes[DESTINATION].destination._auth.requests)


@pytest.fixture(scope="module")
def sekmet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sekmet]:
    server = Sekmet(tmp_path_factory.mktemp("sekmet"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pusher(tmp_path_factory: pytest.TempPathFactory, sekmet: Sekmet) -> Iterator[PushEngine]:
    os.environ[SECRET_ENV] = CLIENT_SECRET
    running = PushEngine(tmp_path_factory.mktemp("push"), sekmet=sekmet)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        os.environ.pop(SECRET_ENV, None)


def _study(sekmet: Sekmet, uid: str) -> list[dict[str, Any]]:
    return sekmet.search("ImagingStudy", UID, f"urn:oid:{uid}")


def _series(uid: str) -> tuple[str, tuple[str, str]]:
    return f"{uid}.1", (f"{uid}.1.1", f"{uid}.1.2")


def test_an_orm_puts_the_study_on_the_ehr_with_its_patient_and_order(pusher: PushEngine, sekmet: Sekmet) -> None:
    uid = "1.2.826.0.1.3680043.10.998.201"
    assert pusher.send(orm(201, "PUSH201", "PUSHER^PAT", study_uid=uid)) == ["AA"]
    rows = [r for r in pusher.delivered() if r.ordering_key.startswith("Patient/")]
    assert rows and all(r.status == "SENT" for r in rows)
    [study] = _study(sekmet, uid)
    assert study["status"] == "registered"
    assert "endpoint" not in study  # our DICOMweb Endpoint has no identifier to upsert it by: dropped
    patient = sekmet.read(study["subject"]["reference"])
    assert {"system": "urn:radbridge:patient-id:NORTH", "value": "PUSH201"}.items() <= patient["identifier"][0].items()
    order = sekmet.read(study["basedOn"][0]["reference"])
    assert [i["value"] for i in order["identifier"] if i["type"]["coding"][0]["code"] == "ACSN"] == ["ACC201"]
    assert order["subject"] == study["subject"]  # the order's own reference resolved to the same remote Patient
    assert sekmet.search("Patient", patient["identifier"][0]["system"], "PUSH201") == [patient]


def test_an_update_updates_the_same_remote_study(pusher: PushEngine, sekmet: Sekmet) -> None:
    uid = "1.2.826.0.1.3680043.10.998.202"
    assert pusher.send(orm(202, "PUSH202", study_uid=uid)) == ["AA"]
    pusher.delivered()
    [first] = _study(sekmet, uid)
    series, images = _series(uid)
    assert mpps_performed(pusher.dicom_port, uid, "ACC202", "PUSH202", f"{uid}.9", series, images) == (0, 0)
    pusher.delivered()
    [now] = _study(sekmet, uid)  # still one: conditional update, no duplicate
    assert now["id"] == first["id"] and int(now["meta"]["versionId"]) > int(first["meta"]["versionId"])
    assert now["status"] == "available"
    assert [(s["uid"], s["numberOfInstances"]) for s in now["series"]] == [(series, 2)]
    assert now["subject"] == first["subject"]


def test_images_under_the_modalitys_own_uid_replace_the_scheduled_study_on_the_ehr(
        pusher: PushEngine, sekmet: Sekmet, corpus: Path) -> None:
    """The scheduled ImagingStudy was pushed while the order waited; the modality then sent its images under
    its own Study Instance UID: the EHR gets the acquired study and loses the scheduled one (conditional
    delete), so it shows one study for the order, as radbridge does."""
    scheduled, acquired = "1.2.826.0.1.3680043.10.998.207", "1.2.826.0.1.3680043.10.998.907"
    assert pusher.send(orm(207, "PUSH207", "OWN^UID", study_uid=scheduled)) == ["AA"]
    pusher.delivered()
    [placeholder] = _study(sekmet, scheduled)
    assert placeholder["status"] == "registered"
    assert c_store(pusher.dicom_port, corpus, acquired, "ACC207", "PUSH207") == 0
    rows = pusher.delivered()
    assert _study(sekmet, scheduled) == []
    [study] = _study(sekmet, acquired)
    assert study["status"] == "available" and study["basedOn"] == placeholder["basedOn"]
    mine = [(json.loads(r.payload), r) for r in rows if json.loads(r.payload)["id"] == scheduled]
    removal = [r for value, r in mine if value.get("removed")]
    earlier = {r.ordering_key for value, r in mine if not value.get("removed")}
    assert [(r.status, r.ordering_key) for r in removal] == [("SENT", earlier.pop())]  # after its pushes
    assert "conditional delete" in removal[0].response


def test_while_the_ehr_is_down_pushes_retry_then_only_the_newest_version_is_sent(
        pusher: PushEngine, sekmet: Sekmet) -> None:
    uid = "1.2.826.0.1.3680043.10.998.203"
    sekmet.stop()
    try:
        assert pusher.send(orm(203, "PUSH203", study_uid=uid)) == ["AA"]
        pusher.settle()
        series, images = _series(uid)
        assert mpps_performed(pusher.dicom_port, uid, "ACC203", "PUSH203", f"{uid}.9", series, images) == (0, 0)
        pusher.settle()
        deadline = time.monotonic() + 30
        key = pusher.rows()[-1].ordering_key
        while pusher.rows(key)[-1].attempts < 3:
            assert time.monotonic() < deadline, "no retries while the server was down"
            time.sleep(0.1)
        *older, newest = pusher.rows(key)
        assert newest.status == "QUEUED" and "ConnectError" in newest.last_error
        # The older versions are settled without a request: the newest one's row carries the change.
        assert older and all(r.status == "SENT" and "superseded" in r.response for r in older)
    finally:
        sekmet.start()
    [row] = [r for r in pusher.delivered() if r.id == newest.id]
    assert row.status == "SENT" and "HTTP 201" in row.response
    [study] = _study(sekmet, uid)
    assert study["status"] == "available" and study["meta"]["versionId"] == "1"  # one PUT: the newest version


def test_a_4xx_answer_is_a_dead_letter_listed_with_the_operation_outcome(pusher: PushEngine, sekmet: Sekmet) -> None:
    uid = "1.2.826.0.1.3680043.10.998.204"
    for _ in range(2):  # two matches make the conditional update fail with 412 (R4 http.html 3.1.0.4.3)
        sekmet.create({"resourceType": "ImagingStudy", "status": "registered", "subject": {"display": "x"},
                       "identifier": [{"system": UID, "value": f"urn:oid:{uid}"}]})
    assert pusher.send(orm(204, "PUSH204", study_uid=uid)) == ["AA"]
    rows = pusher.delivered()
    [dead] = [r for r in rows if r.status == "ERROR"]
    assert dead.attempts == 1 and dead.last_error.startswith("HTTP 412: error")
    listed = subprocess.run([sys.executable, "-m", "engine.cli.main", "--config", str(pusher.root / "config"),
                             "outbox", "list", "--status", "ERROR", "--json"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert listed.returncode == 0, listed.stderr
    [shown] = json.loads(listed.stdout)
    assert (shown["id"], shown["destination"], shown["last_error"]) == (dead.id, DESTINATION, dead.last_error)
    assert len(_study(sekmet, uid)) == 2  # nothing changed on the server


def test_the_token_is_cached_and_renewed_when_the_server_refuses_it(pusher: PushEngine, sekmet: Sekmet) -> None:
    before = pusher.token_requests()
    assert before >= 1
    uid = "1.2.826.0.1.3680043.10.998.205"
    assert pusher.send(orm(205, "PUSH205", study_uid=uid)) == ["AA"]
    pusher.delivered()
    assert pusher.token_requests() == before  # cached: no new token per push
    sekmet.rotate_signing_key()  # every token issued so far is now refused with 401
    uid = "1.2.826.0.1.3680043.10.998.206"
    assert pusher.send(orm(206, "PUSH206", study_uid=uid)) == ["AA"]
    [row] = [r for r in pusher.delivered() if r.ordering_key == pusher.rows()[-1].ordering_key]
    assert row.status == "SENT" and row.attempts == 1  # the 401 got a new token within the same attempt
    assert pusher.token_requests() == before + 1
    assert len(_study(sekmet, uid)) == 1


def _accession(resource: dict[str, Any]) -> tuple[str, str]:
    [found] = [i for i in resource["identifier"] if i.get("type", {}).get("coding", [{}])[0].get("code") == "ACSN"]
    return found["system"], found["value"]


def test_a_report_and_its_correction_update_one_diagnostic_report_on_the_ehr(
        pusher: PushEngine, sekmet: Sekmet) -> None:
    uid = "1.2.826.0.1.3680043.10.998.205"
    assert pusher.send(orm(205, "PUSH205", study_uid=uid)) == ["AA"]
    assert pusher.report(oru(205, "R205F", "F", "No acute findings.", impression="Normal head CT.")) == ["AA"]
    pusher.delivered()
    [study] = _study(sekmet, uid)
    order = sekmet.read(study["basedOn"][0]["reference"])
    system, value = _accession(order)
    assert value == "ACC205"
    [report] = sekmet.search("DiagnosticReport", system, value)
    assert report["status"] == "final" and report["conclusion"] == "Normal head CT."
    assert sekmet.read(report["basedOn"][0]["reference"])["id"] == order["id"]
    assert report["imagingStudy"][0]["reference"].endswith(f"ImagingStudy/{study['id']}")

    assert pusher.report(oru(205, "R205C", "C", "Small chronic infarct.", impression="Old infarct.")) == ["AA"]
    pusher.delivered()
    [now] = sekmet.search("DiagnosticReport", system, value)  # the same remote report, updated
    assert now["id"] == report["id"] and now["status"] == "corrected" and now["conclusion"] == "Old infarct."



def test_a_report_pdf_is_pushed_inline_byte_for_byte(pusher: PushEngine, sekmet: Sekmet) -> None:
    # Our DiagnosticReport names its PDF by URL (Binary/report-…, served by us); the EHR's server cannot fetch it
    # from here, so the push carries the bytes inline.
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 64 + b"\n%%EOF\n"
    obx = f"OBX|2|ED|PDF^Report PDF||^AP^PDF^Base64^{base64.b64encode(pdf).decode()}||||||F"
    uid = "1.2.826.0.1.3680043.10.998.206"
    assert pusher.send(orm(206, "PUSH206", study_uid=uid)) == ["AA"]
    assert pusher.report(oru(206, "R206F", "F", "See PDF.").rstrip("\r") + "\r" + obx + "\r") == ["AA"]
    pusher.delivered()
    [study] = _study(sekmet, uid)
    [report] = sekmet.search("DiagnosticReport", *_accession(sekmet.read(study["basedOn"][0]["reference"])))
    [form] = [f for f in report["presentedForm"] if f["contentType"] == "application/pdf"]
    assert "url" not in form and base64.b64decode(form["data"]) == pdf and form["size"] == len(pdf)


def test_a_push_leaves_when_the_projector_queues_it_not_at_the_next_outbox_poll(
        tmp_path: Path, sekmet: Sekmet) -> None:
    os.environ[SECRET_ENV] = CLIENT_SECRET
    slow_poll = PushEngine(tmp_path, sekmet=sekmet, poll_interval=120.0)
    try:
        slow_poll.start()
        uid = "1.2.826.0.1.3680043.10.998.207"
        started = time.monotonic()
        assert slow_poll.send(orm(207, "PUSH207", study_uid=uid)) == ["AA"]
        while not _study(sekmet, uid):
            # Before the projector woke the outbox, the push waited for the poll (120 s here).
            assert time.monotonic() - started < 30, [(r.id, r.status, r.last_error) for r in slow_poll.rows()]
            time.sleep(0.1)
        assert all(r.status == "SENT" for r in slow_poll.delivered(timeout=30))
    finally:
        slow_poll.stop()
        os.environ.pop(SECRET_ENV, None)
