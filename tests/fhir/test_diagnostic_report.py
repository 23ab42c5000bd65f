"""DiagnosticReport from the report tables: built by the projector, one FHIR version per report version."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from sqlalchemy import Connection, insert, select, text, update

from engine.domain.records import CodedValue, ReportLine, ReportRecord
from engine.domain.report_status import load_status_table
from engine.domain.report_tables import reports
from engine.domain.reports import ReportPolicy, apply_report
from engine.domain.tables import orders, patients, procedure_steps
from engine.fhir.binary import inline, read_document
from engine.fhir.model import FhirSettings
from engine.fhir.projector import project_all
from engine.fhir.search import history, read, vread
from engine.fhir.store import dumps
from engine.fhir.tables import fhir_pending, fhir_resources, fhir_versions
from engine.store.database import Database
from engine.store.migrate import alembic_config, upgrade
from tests.conftest import ROOT

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
SETTINGS = FhirSettings(UTC)
UID = "1.2.826.0.1.3680043.10.994.1"
POLICY = ReportPolicy(load_status_table(ROOT / "mappings" / "tables" / "report_status.csv"))


def _seed(conn: Connection, placer: str = "PL1", pid: str = "P1") -> int:
    pk = conn.execute(insert(patients).values(patient_id=pid, issuer="HOSP", patient_name="DOE^JANE", sex="F",
                                              birth_date="19800102", created_at=NOW,
                                              updated_at=NOW)).inserted_primary_key[0]
    order = int(conn.execute(insert(orders).values(
        patient_pk=pk, order_key=placer, placer_order_number=placer, accession_number=f"ACC{placer}",
        study_instance_uid=UID if placer == "PL1" else "", procedure_code_value="CTHEAD", procedure_coding_scheme="L",
        procedure_code_meaning="CT head", created_at=NOW, updated_at=NOW)).inserted_primary_key[0])
    conn.execute(insert(procedure_steps).values(order_pk=order, status="SCHEDULED", modality="CT",
                                                start_datetime="20261205093000", created_at=NOW, updated_at=NOW))
    return order


def _report(status: str, *lines: str, placer: str = "PL1", impression: str = "") -> ReportRecord:
    body = [ReportLine(value_type="TX", section="body", text=line) for line in lines]
    if impression:
        body.append(ReportLine(value_type="TX", section="impression", text=impression))
    return ReportRecord(patient_id="P1", placer_order_number=placer, status=status,
                        observation_datetime="20261205093000", interpreter="Radiologist^Rita",
                        interpreter_id="RR1", procedure_code=CodedValue(code_value="CTHEAD", code_meaning="CT head"),
                        lines=body)


def _apply(db: Database, record: ReportRecord, minutes: int = 0) -> None:
    db.writer.call(lambda c: apply_report(c, record, POLICY, NOW + timedelta(minutes=minutes)))


def _json(db: Database, res_id: str = "1") -> dict:
    stored = db.read(lambda c: read(c, "DiagnosticReport", res_id))
    assert stored is not None
    return dict(json.loads(stored.json))


def _text(resource: dict) -> str:
    return base64.b64decode(resource["presentedForm"][0]["data"]).decode()


def test_a_final_report_becomes_a_diagnostic_report(db: Database) -> None:
    db.writer.call(_seed)
    _apply(db, _report("F", "No bleed.", "Ventricles normal.", impression="Normal CT head."))
    project_all(db, SETTINGS)
    found = _json(db)
    assert found["status"] == "final" and found["meta"]["versionId"] == "1"
    assert found["subject"] == {"reference": "Patient/1"}
    assert found["basedOn"] == [{"reference": "ServiceRequest/1"}]
    assert found["imagingStudy"] == [{"reference": f"ImagingStudy/{UID}"}]
    assert found["category"][0]["coding"][0]["code"] == "LP29684-5"
    assert found["code"]["coding"][0]["code"] == "CTHEAD"
    assert [i["value"] for i in found["identifier"]] == ["ACCPL1", "1"]
    assert found["effectiveDateTime"] == "2026-12-05T09:30:00+00:00"
    assert found["issued"].startswith("2026-12-05T10:00:00")
    assert found["resultsInterpreter"] == [{"identifier": {"value": "RR1"}, "display": "Rita Radiologist"}]
    assert found["conclusion"] == "Normal CT head."
    assert _text(found) == "No bleed.\nVentricles normal.\nNormal CT head."
    assert found["presentedForm"][0]["contentType"] == "text/plain; charset=utf-8"


def test_every_report_version_is_a_fhir_version_even_when_projected_together(db: Database) -> None:
    db.writer.call(_seed)
    _apply(db, _report("P", "Wet read: no bleed."))
    _apply(db, _report("F", "No bleed."), 1)
    _apply(db, _report("C", "Small bleed left."), 2)  # three versions before the projector runs
    project_all(db, SETTINGS)
    assert _json(db)["meta"]["versionId"] == "3" and _json(db)["status"] == "corrected"
    first = db.read(lambda c: vread(c, "DiagnosticReport", "1", 1))
    assert first is not None
    assert json.loads(first.json)["status"] == "preliminary" and _text(json.loads(first.json)) == "Wet read: no bleed."
    kept = db.read(lambda c: history(c, "DiagnosticReport", "1", 50))
    assert kept is not None
    assert [s.version_id for s in kept] == [3, 2, 1]
    assert [json.loads(s.json)["status"] for s in kept] == ["corrected", "final", "preliminary"]
    _apply(db, _report("X"), 3)
    project_all(db, SETTINGS)
    cancelled = _json(db)
    assert cancelled["status"] == "cancelled" and cancelled["meta"]["versionId"] == "4"
    assert "presentedForm" not in cancelled
    old = db.read(lambda c: vread(c, "DiagnosticReport", "1", 2))
    assert old is not None and _text(json.loads(old.json)) == "No bleed."  # earlier versions never rewritten


def test_a_report_waits_unpublished_until_its_order_arrives(db: Database) -> None:
    _apply(db, _report("F", "No bleed.", placer="PL9"))
    project_all(db, SETTINGS)
    assert db.read(lambda c: read(c, "DiagnosticReport", "1")) is None

    def order_arrives(conn: Connection) -> None:
        order = _seed(conn, "PL9", "P9")
        conn.execute(update(reports).values(order_pk=order, patient_pk=1))

    db.writer.call(order_arrives)
    project_all(db, SETTINGS)
    assert _json(db)["basedOn"] == [{"reference": "ServiceRequest/1"}]


def test_a_merge_rewrites_the_current_version_and_keeps_its_number(db: Database) -> None:
    db.writer.call(_seed)
    _apply(db, _report("F", "No bleed."))
    project_all(db, SETTINGS)
    survivor = db.writer.call(lambda c: _seed(c, "PL2", "P2"))
    db.writer.call(lambda c: c.execute(update(orders).where(orders.c.id == 1).values(patient_pk=2)))
    project_all(db, SETTINGS)
    moved = _json(db)
    assert moved["subject"] == {"reference": "Patient/2"} and moved["meta"]["versionId"] == "1"
    assert survivor == 2
    again = db.read(lambda c: vread(c, "DiagnosticReport", "1", 1))
    assert again is not None and json.loads(again.json)["subject"] == {"reference": "Patient/2"}


def test_the_migration_backfills_attached_reports(db: Database) -> None:
    # The reports are stored by today's code (every column of today's tables), then the schema goes back
    # to 0016, before the backfill: the reports stay, and so does what 0016 had of them.
    db.writer.call(_seed)
    _apply(db, _report("F", "No bleed."))
    _apply(db, _report("F", "Waiting.", placer="PL7"))
    with db.write_engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0016")
    db.writer.call(lambda c: c.execute(text("DELETE FROM fhir_pending")))
    upgrade(db.write_engine)
    keys = db.read(lambda c: c.execute(select(fhir_pending.c.kind, fhir_pending.c.key)).all())
    assert [tuple(k) for k in keys] == [("DiagnosticReport", "1")]
    project_all(db, SETTINGS)
    assert _json(db)["status"] == "final"
    _apply(db, _report("C", "Bleed."), 1)  # the triggers are back
    project_all(db, SETTINGS)
    assert _json(db)["meta"]["versionId"] == "2"


def test_a_pdf_report_is_presented_as_the_pdf(db: Database) -> None:
    """A report whose content is a PDF (OBX ED) has it as its presentedForm (application/pdf), beside
    the text when it has text too; HL7 table 0191/0291 codes (AP, PDF) are written as a MIME type."""
    pdf = base64.b64encode(b"%PDF-1.4 report").decode()
    db.writer.call(_seed)
    record = _report("F", "No bleed.")
    record = record.model_copy(update={"lines": [*record.lines, ReportLine(
        value_type="ED", media_type="AP", media_subtype="PDF", encoding="Base64", data=pdf)]})
    _apply(db, record)
    project_all(db, SETTINGS)
    resource = _json(db)
    forms = resource["presentedForm"]
    assert [f["contentType"] for f in forms] == ["text/plain; charset=utf-8", "application/pdf"]
    assert "data" not in forms[1] and forms[1]["url"] == "Binary/report-1-1-1" and forms[1]["size"] == 15
    found = db.read(lambda c: read_document(c, "report-1-1-1"))
    assert found is not None and found[0] == "1" and found[1].data == b"%PDF-1.4 report"
    pushed = db.read(lambda c: inline(c, resource))  # what a FHIR push sends: the bytes inline again
    assert pushed["presentedForm"][1]["data"] == pdf and "url" not in pushed["presentedForm"][1]
    assert pushed["presentedForm"][0] == forms[0]


def test_a_pdf_sent_with_line_breaks_in_its_base64_is_still_presented(db: Database) -> None:
    pdf = base64.b64encode(b"%PDF-1.4 report with more bytes").decode()
    db.writer.call(_seed)
    _apply(db, _report("F").model_copy(update={"lines": [ReportLine(
        value_type="ED", media_type="application", media_subtype="pdf", encoding="Base64",
        data=pdf[:20] + "\r\n" + pdf[20:])]}))
    project_all(db, SETTINGS)
    assert [(f["contentType"], f["url"]) for f in _json(db)["presentedForm"]] == [("application/pdf",
                                                                                  "Binary/report-1-1-1")]
    found = db.read(lambda c: read_document(c, "report-1-1-1"))
    assert found is not None and found[1].data == base64.b64decode(pdf)


def test_a_text_document_in_ascii_encoding_with_any_characters_is_presented_with_its_charset(db: Database) -> None:
    """hl7fix6: an OBX ED with ED-4 A (no encoding: the text itself) holding characters beyond Latin-1 (Greek,
    CJK from a UTF-8 message) was left out of presentedForm without a word; it is served as the characters
    received, UTF-8 with its charset. Latin-1 text stays Latin-1 bytes (its size and hash as before), with its
    charset said; ASCII text as before."""
    greek, latin, ascii_text = "Ακτινογραφία θώρακος: 正常", "Befund: unauffällig", "Plain report."
    db.writer.call(_seed)
    docs = [ReportLine(value_type="ED", media_type="TEXT", media_subtype="plain", encoding="A", data=data)
            for data in (greek, latin, ascii_text)]
    _apply(db, _report("F").model_copy(update={"lines": docs}))
    project_all(db, SETTINGS)
    forms = _json(db)["presentedForm"]
    assert [(f["contentType"], f["url"], f["size"]) for f in forms] == [
        ("text/plain; charset=utf-8", "Binary/report-1-1-1", len(greek.encode())),
        ("text/plain; charset=iso-8859-1", "Binary/report-1-1-2", len(latin)),
        ("text/plain", "Binary/report-1-1-3", len(ascii_text))]  # fmt: skip
    found = db.read(lambda c: read_document(c, "report-1-1-1"))
    assert found is not None and found[1].data.decode("utf-8") == greek


def test_types_as_real_senders_write_them_are_mime_types(db: Database) -> None:
    """hl7fix6, from the corpus: a CDA report as ``^Text^text/xml^ASCII^<?xml ...`` (dcm4che, IHE RAD) was
    ``text/text/xml``; an RP ``620943170^UK^ZB`` (a local type) was ``zb/octet-stream``; SD^PICT ``sd/pict``."""
    db.writer.call(_seed)
    cda = '<?xml version="1.0" encoding="utf-8"?><ClinicalDocument/>'
    lines = [ReportLine(value_type="ED", media_type="Text", media_subtype="text/xml", encoding="ASCII", data=cda),
             ReportLine(value_type="RP", reference="620943170", application="UK", media_type="ZB"),
             ReportLine(value_type="RP", reference="https://testurl.com", media_type="SD", media_subtype="PICT"),
             ReportLine(value_type="ED", media_type="ZB", media_subtype="pdf", encoding="Base64", data="JVBERi0=")]
    _apply(db, _report("F", "Text.").model_copy(update={"lines": [*_report("F", "Text.").lines, *lines]}))
    project_all(db, SETTINGS)
    forms = _json(db)["presentedForm"]
    assert [f.get("contentType") for f in forms] == ["text/plain; charset=utf-8", "text/xml", None, "image/pict",
                                                     "application/pdf"]


def _pdf_report(status: str, pdf: bytes) -> ReportRecord:
    record = _report(status, f"Report {status}.")
    document = ReportLine(value_type="ED", media_type="AP", media_subtype="PDF", encoding="Base64",
                          data=base64.b64encode(pdf).decode())
    return record.model_copy(update={"lines": [*record.lines, document]})


def _stored_report(db: Database) -> tuple[Any, Any, Any, list[Any]]:
    """The one DiagnosticReport's queries (its current row; its versions) and what they read now."""
    r, v = fhir_resources.c, fhir_versions.c
    report = select(r.id, r.json, r.content_hash, r.last_updated).where(r.res_type == "DiagnosticReport")
    current = db.read(lambda c: c.execute(report).one())
    of_report = select(v.version_id, v.json).where(v.resource_pk == current.id).order_by(v.version_id)
    return report, of_report, current, list(db.read(lambda c: c.execute(of_report).all()))


def test_the_migration_names_stored_documents_by_url_as_the_projector_now_writes_them(db: Database) -> None:
    """Reports stored before documents were served as Binary carry them inline in every stored version; 0026
    rewrites them in place (versionId and lastUpdated kept) to exactly what the projector writes now."""
    db.writer.call(_seed)
    _apply(db, _pdf_report("F", b"%PDF-1.4 first"))
    _apply(db, _pdf_report("C", b"%PDF-1.4 corrected"), 1)
    project_all(db, SETTINGS)
    report, of_report, current, versions = _stored_report(db)
    assert [json.loads(j)["presentedForm"][1]["url"] for _, j in versions] == ["Binary/report-1-1-1",
                                                                              "Binary/report-1-2-1"]

    def inline_form(text: str) -> str:  # as the projector wrote it before: the bytes as data, no url
        doc = json.loads(text)
        for n, form in enumerate(doc["presentedForm"]):
            if "url" in form:
                found = db.read(lambda c, url=form["url"]: read_document(c, url.split("/")[1]))
                assert found is not None
                doc["presentedForm"][n] = {"contentType": form["contentType"],
                                           "data": base64.b64encode(found[1].data).decode(),
                                           "title": form["title"], "creation": form["creation"]}
        return dumps(doc)

    def old(conn: Connection) -> None:
        r, v = fhir_resources.c, fhir_versions.c
        conn.execute(update(fhir_resources).where(r.id == current.id).values(json=inline_form(current.json),
                                                                              content_hash="old"))
        for version_id, stored in versions:
            conn.execute(update(fhir_versions).where(v.resource_pk == current.id, v.version_id == version_id)
                         .values(json=inline_form(stored)))

    with db.write_engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0025")
        old(conn)
    assert "JVBERi0xLjQgZmlyc3Q=" in db.read(lambda c: c.execute(of_report).all())[0].json  # the old form
    upgrade(db.write_engine)
    assert db.read(lambda c: c.execute(report).one()) == current
    assert db.read(lambda c: c.execute(of_report).all()) == versions
    db.writer.call(lambda c: c.execute(insert(fhir_pending).values(kind="DiagnosticReport", key="1")))
    assert project_all(db, SETTINGS) == 0  # a rebuild finds nothing to rewrite
    assert db.read(lambda c: c.execute(report).one()) == current


def test_a_report_that_only_points_to_its_document_presents_the_url(db: Database) -> None:
    """hl7fix5: a report whose only content is an OBX RP (reference pointer) was AE 101; it is an Attachment
    with the url as received (and a content type when RP-3/RP-4 give one), never fetched."""
    db.writer.call(_seed)
    url = "https://ris.example/doc?id=7304&fmt=pdf"
    _apply(db, _report("F").model_copy(update={"lines": [
        ReportLine(value_type="RP", reference=url, application="RIS", media_type="AP", media_subtype="PDF"),
        ReportLine(value_type="RP", reference="urn:oid:1.2.3.4")]}))
    project_all(db, SETTINGS)
    forms = [{k: v for k, v in f.items() if k != "creation"} for f in _json(db)["presentedForm"]]
    assert forms == [
        {"contentType": "application/pdf", "url": url, "title": "Radiology report document"},
        {"url": "urn:oid:1.2.3.4", "title": "Radiology report document"}]


def test_a_reference_that_is_not_an_absolute_uri_is_named_not_given_as_url(db: Database) -> None:
    """review9 (left to the lead): RP-1 is often a key in the system RP-2 names (DOC123), not a URL. Given as
    ``url`` it resolved against this server's base, and ``Binary/report-1-1-1`` in one patient's report showed
    FHIR clients another report's document as its own. Only an absolute URI (a scheme) is a url; any other
    pointer is named in the title with its application (RP-2's first component)."""
    db.writer.call(_seed)
    _apply(db, _report("F").model_copy(update={"lines": [
        ReportLine(value_type="RP", reference="DOC123", application="RIS&1.2.840.99.7&ISO", media_type="AP",
                   media_subtype="PDF"),
        ReportLine(value_type="RP", reference="Binary/report-1-1-1"),
        ReportLine(value_type="RP", reference="https://ris.example/doc/9", application="RIS")]}))
    project_all(db, SETTINGS)
    forms = [{k: v for k, v in f.items() if k != "creation"} for f in _json(db)["presentedForm"]]
    assert forms == [
        {"contentType": "application/pdf", "title": "Radiology report document: reference DOC123 in RIS"},
        {"title": "Radiology report document: reference Binary/report-1-1-1"},
        {"url": "https://ris.example/doc/9", "title": "Radiology report document"}]


def test_a_push_never_inlines_another_reports_document_that_a_reference_names(db: Database) -> None:
    """review9: an RP reference is presented with its url as received; one reading ``Binary/report-1-1-1`` (a
    RIS that copied a URL of ours into another patient's report) was taken by the FHIR push for one of our own
    document URLs and replaced by report 1's PDF: patient P1's document sent to the EHR inside P2's report.
    Only the report's own documents are inlined; a reference stays a url."""
    db.writer.call(_seed)
    db.writer.call(lambda c: _seed(c, placer="PL2", pid="P2"))
    _apply(db, _pdf_report("F", b"%PDF-1.4 patient one"))
    _apply(db, _report("F", placer="PL2").model_copy(update={"patient_id": "P2", "lines": [
        ReportLine(value_type="RP", reference="Binary/report-1-1-1", application="RIS", media_type="AP",
                   media_subtype="PDF")]}))
    project_all(db, SETTINGS)
    resource = _json(db, "2")  # a relative pointer is no url (it would resolve against our base): named only
    assert [f.get("url") for f in resource["presentedForm"]] == [None]
    assert resource["presentedForm"][0]["title"] == "Radiology report document: reference Binary/report-1-1-1 in RIS"
    forged = {**resource, "presentedForm": [{"url": "Binary/report-1-1-1", "title": "x"}]}  # push: still only its own
    pushed = db.read(lambda c: inline(c, forged))
    assert pushed["presentedForm"][0]["url"] == "Binary/report-1-1-1" and "data" not in pushed["presentedForm"][0]
    own = db.read(lambda c: inline(c, _json(db, "1")))  # report 1's own document is still sent inline
    assert base64.b64decode(own["presentedForm"][1]["data"]) == b"%PDF-1.4 patient one"


def test_a_downgrade_below_0026_puts_the_documents_inline_again(db: Database) -> None:
    """review9: 0026's downgrade did nothing, so the code before it (which serves no Binary) served reports whose
    documents were URLs to nothing: a PDF unreachable over FHIR until its report changed. The downgrade writes
    them inline as that code did (an RP reference stays a url), and the upgrade gives back the URL form."""
    import hashlib

    db.writer.call(_seed)
    _apply(db, _pdf_report("F", b"%PDF-1.4 first"))
    record = _pdf_report("C", b"%PDF-1.4 corrected")
    _apply(db, record.model_copy(update={"lines": [*record.lines, ReportLine(
        value_type="RP", reference="https://ris.example/doc/1", application="RIS")]}), 1)
    project_all(db, SETTINGS)
    report, of_report, current, versions = _stored_report(db)

    with db.write_engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0025")
    old = db.read(lambda c: c.execute(report).one())
    for stored, pdf in [(db.read(lambda c: c.execute(of_report).all())[0].json, b"%PDF-1.4 first"),
                        (old.json, b"%PDF-1.4 corrected")]:
        forms = json.loads(stored)["presentedForm"]
        assert forms[1] == {"contentType": "application/pdf", "data": base64.b64encode(pdf).decode(),
                            "title": "Radiology report document", "creation": forms[0]["creation"]}
    assert json.loads(old.json)["presentedForm"][2]["url"] == "https://ris.example/doc/1"
    body = {k: value for k, value in json.loads(old.json).items() if k != "meta"}
    assert old.content_hash == hashlib.sha256(dumps(body).encode()).hexdigest()
    upgrade(db.write_engine)
    assert db.read(lambda c: c.execute(report).one()) == current
    assert db.read(lambda c: c.execute(of_report).all()) == versions


def test_0028_names_a_stored_large_report_text_by_url_and_its_downgrade_inlines_it_again(db: Database) -> None:
    """fhirfix6: the projector names a report text over 64 KiB by URL (Binary …-0); versions stored before keep
    it inline (a report is not rebuilt while it does not change), so 0028 rewrites them in place to exactly what
    the projector writes now, and its downgrade puts the text inline again as the code before it wrote it."""
    import hashlib

    long_text = "Corrected findings: " + "no acute abnormality. " * 4000  # about 88 KB
    db.writer.call(_seed)
    _apply(db, _report("F", "Findings: short."))
    _apply(db, _report("C", long_text), 1)
    project_all(db, SETTINGS)
    report, of_report, current, versions = _stored_report(db)
    assert "data" in json.loads(versions[0][1])["presentedForm"][0]  # a short text stays inline
    latest = json.loads(current.json)["presentedForm"][0]
    assert latest["url"] == "Binary/report-1-2-0" and "data" not in latest
    assert json.loads(versions[1][1])["presentedForm"][0] == latest

    with db.write_engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0027")
    old = db.read(lambda c: c.execute(report).one())
    inline_form = json.loads(old.json)["presentedForm"][0]
    assert base64.b64decode(inline_form["data"]).decode().strip() == long_text.strip()
    assert inline_form["creation"] == latest["creation"] and "url" not in inline_form
    body = {k: value for k, value in json.loads(old.json).items() if k != "meta"}
    assert old.content_hash == hashlib.sha256(dumps(body).encode()).hexdigest()
    stored = db.read(lambda c: c.execute(of_report).all())
    assert stored[0] == versions[0] and json.loads(stored[1].json)["presentedForm"][0] == inline_form
    upgrade(db.write_engine)
    assert db.read(lambda c: c.execute(report).one()) == current
    assert db.read(lambda c: c.execute(of_report).all()) == versions
    found = db.read(lambda c: read_document(c, "report-1-2-0"))
    assert found is not None and found[1].data.decode().strip() == long_text.strip()
