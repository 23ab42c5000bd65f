"""FHIR clients nobody here wrote, against the running engine over HTTP: fhirclient, fhirpy, fhir-kit-client."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from fhirclient import client as smart_client
from fhirclient.models.imagingstudy import ImagingStudy
from fhirpy import SyncFHIRClient

from tests.conftest import need
from tests.fhir.conftest import NODE_MODULES, FhirHttp, InProcessEngine
from tests.fhir.messages import orm

STUDIES = 7  # one patient's studies: more than one page at _count=3


@pytest.fixture(scope="module")
def patient(engine: InProcessEngine, api: FhirHttp) -> tuple[str, list[str]]:
    """One patient with STUDIES orders; its reference and the Study Instance UIDs."""
    uids = [f"1.2.826.0.1.3680043.10.998.{n}" for n in range(STUDIES)]
    acks = engine.send(*(orm(200 + n, "CLIENTS1", "CLIENT^CAROL", study_uid=uid) for n, uid in enumerate(uids)))
    assert acks == ["AA"] * STUDIES
    engine.settle()
    reference = api.get(f"ImagingStudy/{uids[0]}").json()["subject"]["reference"]
    return reference, uids


def test_fhirclient_parses_the_capability_statement_strictly_and_reads(engine: InProcessEngine,
                                                                       patient: tuple[str, list[str]]) -> None:
    smart = smart_client.FHIRClient(settings={"app_id": "radbridge-tests", "api_base": engine.base})
    smart.server.get_capability()  # strict: any element fhirclient does not know raises
    statement = smart.server.capabilityStatement
    assert statement.fhirVersion == "4.0.1" and statement.kind == "instance"
    served = {r.type: {p.name for p in r.searchParam or []} for r in statement.rest[0].resource}
    assert {"identifier", "patient", "started", "status", "modality", "basedon", "endpoint"} <= served["ImagingStudy"]
    study = ImagingStudy.read(patient[1][0], smart.server)
    assert study.status == "registered" and study.subject.reference == patient[0]
    found = ImagingStudy.where({"identifier": f"urn:dicom:uid|urn:oid:{patient[1][1]}"}).perform_resources_iter(
        smart.server)
    assert [s.id for s in list(found)] == [patient[1][1]]


def test_fhirpy_searches_with_tokens_and_pages_to_the_end(engine: InProcessEngine,
                                                          patient: tuple[str, list[str]]) -> None:
    fhir = SyncFHIRClient(engine.base)
    every = fhir.resources("ImagingStudy").search(patient=patient[0]).limit(3).fetch_all()
    assert sorted(s.id for s in every) == sorted(patient[1])
    token = fhir.resources("ImagingStudy").search(identifier=f"urn:dicom:uid|urn:oid:{patient[1][2]}").fetch()
    assert [s.id for s in token] == [patient[1][2]]
    by_accession = fhir.resources("ServiceRequest").search(identifier="urn:radbridge:accession|ACC203").fetch()
    assert [r["identifier"][-1]["value"] for r in by_accession] == ["ACC203"]
    none_without_system = fhir.resources("ServiceRequest").search(identifier="|ACC203").fetch()
    assert none_without_system == []


def test_fhir_kit_client_reads_searches_and_follows_next_pages(engine: InProcessEngine,
                                                               patient: tuple[str, list[str]]) -> None:
    need(shutil.which("node") is not None and (NODE_MODULES / "fhir-kit-client").is_dir(),
         "node and fhir-kit-client (make install) are needed")
    script = Path(__file__).with_name("fhir_kit_client.mjs")
    done = subprocess.run(["node", str(script), str(NODE_MODULES), engine.base, patient[0], patient[1][0]],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["read"] == {"id": patient[1][0], "status": "registered"}
    assert [len(p) for p in answer["pages"]] == [3, 3, 1]
    assert sorted(i for p in answer["pages"] for i in p) == sorted(patient[1])
    assert answer["missing"] == {"status": 404, "outcome": "not-found"}
