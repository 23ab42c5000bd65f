"""FHIR push, pure parts and the projector's queueing: identifier rules, references, ordering, config, secrets."""

from __future__ import annotations

import json
from datetime import UTC

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select, update

from channels.fhir.push.auth import token_source
from channels.fhir.push.destination import outcome_text
from channels.fhir.push.references import local_references, logical, rewrite
from channels.fhir.push.rules import conditional_key, conditional_path
from engine.config.models import EngineConfig, FhirBearerAuthConfig
from engine.domain.tables import procedure_steps
from engine.errors import ConfigError
from engine.fhir.model import Built, FhirSettings
from engine.fhir.projector import project_all
from engine.fhir.push import PushRef, PushSubscription, ordering_key
from engine.store.database import Database
from engine.store.schema import outbox
from tests.fhir.test_projector import UID, _seed

V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _typed(code: str, system: str, value: str) -> dict:
    return {"type": {"coding": [{"system": V2, "code": code}]}, "system": system, "value": value}


def test_each_type_is_upserted_by_its_lifelong_identifier() -> None:
    study = {"resourceType": "ImagingStudy", "identifier": [_typed("ACSN", "urn:acc", "A1"),
                                                            {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}]}
    assert conditional_key(study) == ("urn:dicom:uid", "urn:oid:1.2.3")
    report = {"resourceType": "DiagnosticReport", "identifier": [{"value": "R9"}, _typed("ACSN", "urn:acc", "A1")]}
    assert conditional_key(report) == ("urn:acc", "A1")
    by_order = {"resourceType": "DiagnosticReport", "basedOn": [{"identifier": _typed("ACSN", "urn:acc", "A2")}]}
    assert conditional_key(by_order) == ("urn:acc", "A2")
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:other", "value": "X"},
                                                         _typed("MR", "urn:mrn", "P1")]}
    assert conditional_key(patient) == ("urn:mrn", "P1")
    order = {"resourceType": "ServiceRequest", "identifier": [_typed("PLAC", "urn:placer", "PL1")]}
    assert conditional_key(order) == ("urn:placer", "PL1")
    assert conditional_key({"resourceType": "Endpoint", "id": "dicomweb"}) is None
    assert conditional_path("ImagingStudy", ("urn:dicom:uid", "urn:oid:1.2")) == (
        "ImagingStudy?identifier=urn%3Adicom%3Auid%7Curn%3Aoid%3A1.2")


def test_references_are_rewritten_kept_with_their_display_or_dropped() -> None:
    study = {"resourceType": "ImagingStudy", "subject": {"reference": "Patient/4", "display": "P"},
             "basedOn": [{"reference": "ServiceRequest/7"}], "endpoint": [{"reference": "Endpoint/dicomweb"}],
             "note": [{"text": "Patient/4 is not a reference"}]}
    assert local_references(study) == ["Patient/4", "ServiceRequest/7", "Endpoint/dicomweb"]
    mapping = {"Patient/4": {"reference": "Patient/abc"}, "ServiceRequest/7": logical("ServiceRequest", ("s", "v")),
               "Endpoint/dicomweb": None}
    assert rewrite(study, mapping) == {
        "resourceType": "ImagingStudy", "subject": {"reference": "Patient/abc", "display": "P"},
        "basedOn": [{"type": "ServiceRequest", "identifier": {"system": "s", "value": "v"}}],
        "note": [{"text": "Patient/4 is not a reference"}]}


def test_pushes_are_ordered_by_patient_resource_or_not_at_all() -> None:
    study = Built("ImagingStudy", "1.2", {"resourceType": "ImagingStudy", "subject": {"reference": "Patient/4"}})
    patient = Built("Patient", "4", {"resourceType": "Patient", "id": "4"})
    assert [ordering_key(study, "patient"), ordering_key(patient, "patient")] == ["Patient/4", "Patient/4"]
    assert ordering_key(study, "resource") == "ImagingStudy/1.2" and ordering_key(study, "none") == ""
    assert PushRef.decode(PushRef("ImagingStudy", "1.2", 3).encode()) == PushRef("ImagingStudy", "1.2", 3)
    removed = PushRef("ImagingStudy", "1.2", 0, True, ({"system": "urn:dicom:uid", "value": "urn:oid:1.2"},))
    assert PushRef.decode(removed.encode()) == removed
    assert b"removed" not in PushRef("ImagingStudy", "1.2", 3).encode()  # rows of older engines read the same
    for bad in (b"MSH|^~\\&|", b'{"type": "ImagingStudy", "id": "1", "version": 0, "identifier": [1]}'):
        with pytest.raises(ValueError):
            PushRef.decode(bad)


def test_the_operation_outcome_is_the_dead_letters_reason() -> None:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "multiple-matches",
                                                           "diagnostics": "2 resources match"}]}
    response = httpx.Response(412, json=body)
    assert outcome_text(response) == "HTTP 412: error multiple-matches: 2 resources match"
    assert outcome_text(httpx.Response(400, text="bad")) == "HTTP 400: bad"


def test_the_projector_queues_each_new_version_for_subscribed_types_only(db: Database) -> None:
    settings = FhirSettings(UTC, push=(PushSubscription("ehr", frozenset({"ImagingStudy"})),))
    db.writer.call(_seed)
    project_all(db, settings)

    def rows() -> list[dict]:
        found = db.read(lambda c: c.execute(select(outbox.c.payload, outbox.c.ordering_key)
                                            .where(outbox.c.destination == "ehr").order_by(outbox.c.id)).all())
        return [{**json.loads(r.payload), "key": r.ordering_key} for r in found]

    assert rows() == [{"type": "ImagingStudy", "id": UID, "version": 1, "key": "Patient/1"}]
    project_all(db, settings)  # nothing changed: nothing queued
    db.writer.call(lambda c: c.execute(update(procedure_steps).values(status="CANCELED")))
    project_all(db, settings)
    assert [r["version"] for r in rows()] == [1, 2]


def test_fhir_destination_config_is_strict() -> None:
    good = {"type": "fhir", "name": "ehr", "base_url": "https://ehr.example/fhir",
            "auth": {"type": "client_credentials", "token_url": "https://ehr.example/token", "client_id": "rb",
                     "client_secret_env": "EHR_SECRET"}}
    config = EngineConfig.model_validate({"destinations": [good]})
    assert config.destinations[0].resource_types == ["ImagingStudy", "DiagnosticReport"]
    for bad in ({**good, "colour": "red"}, {**good, "resource_types": ["Observation"]},
                {**good, "base_url": "ftp://x"}, {**good, "auth": {"type": "bearer", "token": "inline-secret"}}):
        with pytest.raises(ValidationError):
            EngineConfig.model_validate({"destinations": [bad]})


def test_a_missing_secret_variable_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RADBRIDGE_TEST_NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="RADBRIDGE_TEST_NO_SUCH_TOKEN"):
        token_source(FhirBearerAuthConfig(type="bearer", token_env="RADBRIDGE_TEST_NO_SUCH_TOKEN"), "ehr.auth")
    monkeypatch.setenv("RADBRIDGE_TEST_NO_SUCH_TOKEN", "t0k")
    source = token_source(FhirBearerAuthConfig(type="bearer", token_env="RADBRIDGE_TEST_NO_SUCH_TOKEN"), "ehr.auth")
    assert source.__class__.__name__ == "StaticBearer"
