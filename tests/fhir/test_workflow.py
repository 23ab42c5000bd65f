"""End to end over the wire: HL7 over MLLP (python-hl7) and MPPS (pynetdicom) in, FHIR R4 out over HTTP."""

from __future__ import annotations

from pathlib import Path

from tests.fhir.conftest import FhirHttp, InProcessEngine
from tests.fhir.messages import adt, c_store, mpps_performed, orm, oru

ACSN = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _only(bundle: dict, res_type: str) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == res_type]


def test_orm_gives_a_service_request_and_a_registered_imaging_study(engine: InProcessEngine, api: FhirHttp) -> None:
    uid = "1.2.826.0.1.3680043.10.999.101"
    assert engine.send(adt("A04", "WF1", "ALPHA^ANN"), orm(101, "WF1", study_uid=uid)) == ["AA", "AA"]
    engine.settle()
    studies = _only(api.get("ImagingStudy", params={"identifier": f"urn:oid:{uid}"}).json(), "ImagingStudy")
    assert [s["status"] for s in studies] == ["registered"]
    study = studies[0]
    assert study["id"] == uid and study["modality"][0]["code"] == "CT"
    request_ref = study["basedOn"][0]["reference"]
    request = api.get(request_ref).json()
    acsn = [i for i in request["identifier"] if i["type"]["coding"][0]["code"] == "ACSN"]
    assert [(i["type"]["coding"][0]["system"], i["value"]) for i in acsn] == [(ACSN, "ACC101")]
    assert request["status"] == "active" and request["intent"] == "order"
    assert request["subject"] == study["subject"]
    found = api.get("ServiceRequest", params={"identifier": "ACC101"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [request_ref.split("/")[1]]


def test_mpps_makes_the_study_available_with_its_series(engine: InProcessEngine, api: FhirHttp) -> None:
    uid = "1.2.826.0.1.3680043.10.999.102"
    assert engine.send(orm(102, "WF2", study_uid=uid)) == ["AA"]
    engine.settle()
    statuses = mpps_performed(engine.dicom_port, uid, "ACC102", "WF2", "1.2.826.0.1.3680043.10.999.102.9",
                              "1.2.826.0.1.3680043.10.999.102.1", ("1.2.826.0.1.3680043.10.999.102.1.1",
                                                                    "1.2.826.0.1.3680043.10.999.102.1.2"))
    assert statuses == (0, 0)
    engine.settle()
    study = api.get(f"ImagingStudy/{uid}").json()
    assert study["status"] == "available"
    assert [(s["uid"], s["modality"]["code"], s["numberOfInstances"]) for s in study["series"]] == [
        ("1.2.826.0.1.3680043.10.999.102.1", "CT", 2)]
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (1, 2)
    by_series = api.get("ImagingStudy", params={"series": "1.2.826.0.1.3680043.10.999.102.1"}).json()
    assert [e["resource"]["id"] for e in by_series["entry"]] == [uid]
    first = api.get(f"ImagingStudy/{uid}/_history/1").json()
    assert first["status"] == "registered" and "series" not in first
    history = api.get(f"ImagingStudy/{uid}/_history").json()
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]][-1] == "1"
    assert history["entry"][0]["resource"]["status"] == "available"


def test_a40_finds_the_merged_patients_studies_under_the_survivor(engine: InProcessEngine, api: FhirHttp) -> None:
    kept, merged = "1.2.826.0.1.3680043.10.999.103", "1.2.826.0.1.3680043.10.999.104"
    assert engine.send(orm(103, "SURV1", "SURVIVOR^SAM", study_uid=kept),
                       orm(104, "PRIOR1", "PRIOR^PAT", study_uid=merged)) == ["AA", "AA"]
    engine.settle()
    survivor = api.get(f"ImagingStudy/{kept}").json()["subject"]["reference"]
    prior = api.get(f"ImagingStudy/{merged}").json()["subject"]["reference"]
    assert survivor != prior
    assert engine.send(adt("A40", "SURV1", "SURVIVOR^SAM", mrg="PRIOR1")) == ["AA"]
    engine.settle()
    bundle = api.get("ImagingStudy", params={"patient": survivor, "_include": "ImagingStudy:patient"}).json()
    assert sorted(s["id"] for s in _only(bundle, "ImagingStudy")) == sorted([kept, merged])
    assert [p["id"] for p in _only(bundle, "Patient")] == [survivor.split("/")[1]]
    old = api.get(prior).json()
    assert old["active"] is False
    assert old["link"] == [{"other": {"reference": survivor}, "type": "replaced-by"}]
    new = api.get(survivor).json()
    assert {"other": {"reference": prior}, "type": "replaces"} in new["link"]
    assert api.get("ImagingStudy", params={"patient": prior}).json()["total"] == 0


def test_images_under_the_modalitys_own_study_uid_replace_the_scheduled_imaging_study(
        engine: InProcessEngine, api: FhirHttp, corpus: Path) -> None:
    """A modality that makes its own Study Instance UID instead of the worklist's: the images match the order
    (accession + patient), and the EHR sees one ImagingStudy for the order, the acquired one, based on the
    order; the scheduled placeholder goes (a study that never comes is not left "registered"), and the
    report points at the acquired study."""
    scheduled, acquired = "1.2.826.0.1.3680043.10.999.105", "1.2.826.0.1.3680043.10.999.905"
    assert engine.send(orm(105, "OWN1", "OWN^UID", study_uid=scheduled)) == ["AA"]
    engine.settle()
    request_ref = api.get(f"ImagingStudy/{scheduled}").json()["basedOn"][0]["reference"]
    assert c_store(engine.dicom_port, corpus, acquired, "ACC105", "OWN1") == 0
    engine.settle()
    bundle = api.get("ImagingStudy", params={"basedon": request_ref}).json()
    studies = _only(bundle, "ImagingStudy")
    assert [(s["id"], s["status"]) for s in studies] == [(acquired, "available")]
    assert studies[0]["basedOn"] == [{"reference": request_ref}]
    acsn = [i["value"] for i in studies[0]["identifier"] if i.get("type", {}).get("coding", [{}])[0].get("code")
            == "ACSN"]
    assert acsn == ["ACC105"]
    assert api.get(f"ImagingStudy/{scheduled}").status_code in (404, 410)
    assert api.get("ImagingStudy", params={"identifier": f"urn:oid:{scheduled}"}).json()["total"] == 0
    assert engine.report(oru(105, "R105", "F", "No acute findings.")) == ["AA"]
    engine.settle()
    reports = api.get("DiagnosticReport", params={"based-on": request_ref}).json()
    assert [r["imagingStudy"] for r in _only(reports, "DiagnosticReport")] == [
        [{"reference": f"ImagingStudy/{acquired}"}]]


def test_a_study_linked_to_another_order_moves_its_imaging_study_and_the_first_order_waits_again(
        engine: InProcessEngine, api: FhirHttp, corpus: Path) -> None:
    """``studies link`` moves an acquired study from the order reconciliation chose to the operator's: the
    acquired ImagingStudy is based on the new order, whose scheduled placeholder goes, and the first order's
    placeholder comes back (it is waiting for images again)."""
    from engine.cli.studies import link_to_accession

    first, second = "1.2.826.0.1.3680043.10.999.106", "1.2.826.0.1.3680043.10.999.107"
    acquired = "1.2.826.0.1.3680043.10.999.906"
    assert engine.send(orm(106, "MOVE1", study_uid=first), orm(107, "MOVE1", study_uid=second)) == ["AA", "AA"]
    assert c_store(engine.dicom_port, corpus, acquired, "ACC106", "MOVE1") == 0
    engine.settle()
    assert api.get(f"ImagingStudy/{first}").status_code in (404, 410)
    based_on_first = api.get(f"ImagingStudy/{acquired}").json()["basedOn"]
    assert engine.runtime is not None and engine.runtime.db is not None
    link_to_accession(engine.runtime.db, engine.runtime.config.engine, acquired, "ACC107")
    engine.settle()
    moved = api.get(f"ImagingStudy/{acquired}").json()
    assert moved["basedOn"] != based_on_first and len(moved["basedOn"]) == 1
    assert api.get(f"ImagingStudy/{second}").status_code in (404, 410)
    back = api.get(f"ImagingStudy/{first}").json()
    assert back["status"] == "registered" and back["basedOn"] == based_on_first
