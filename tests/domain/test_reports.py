"""Reports: versions, order matching, waiting reports, and the ORU^R01 they make (engine.domain.reports)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine.config.models import EngineConfig
from engine.domain.handlers import OrdersHandler
from engine.domain.report_handler import ReportsHandler, receivers, report_policy
from engine.domain.report_tables import report_versions, reports
from engine.errors import HL7ApplicationError
from engine.handlers import Outbound
from engine.hl7.er7 import Message
from engine.store.database import Database
from tests.conftest import ROOT
from tests.domain.factories import apply_records, context, order, patient

ORU = "MSH|^~\\&|REP|HOSP|RADBRIDGE|HOSP|20261122100000||ORU^R01|R1|P|2.5.1\rPID|1||P1^^^HOSP\rOBR|1|PL1\r"


def report(status: str = "F", text: str = "No acute finding.", **fields: Any) -> dict[str, Any]:
    """A ``report`` record for order PL1 (filler FPL1) of patient P1."""
    base: dict[str, Any] = {
        "record": "report", "patient_id": "P1", "issuer": "HOSP", "placer_order_number": "PL1",
        "filler_order_number": "FPL1", "status": status, "observation_datetime": "20261122093000",
        "interpreter": "Radiologist^Rita", "interpreter_id": "RR1",
        "lines": [{"value_type": "TX", "observation_id": "GDT", "section": "body", "text": line}
                  for line in text.split("\n")],
    }  # fmt: skip
    return base | fields


@pytest.fixture
def config(tmp_path: Path) -> EngineConfig:
    """The shipped mappings and tables, one receiver ``ehr`` on a (never contacted) MLLP address."""
    return EngineConfig.model_validate({
        "mappings_dir": ROOT / "mappings", "timezone": "UTC",
        "reports": {"receivers": [{"name": "ehr", "mllp": "127.0.0.1:1"}]},
    })  # fmt: skip


@pytest.fixture
def handler(config: EngineConfig) -> ReportsHandler:
    return ReportsHandler(report_policy(config), receivers(config))


@pytest.fixture
def ordered(db: Database, orders_handler: OrdersHandler) -> Database:
    apply_records(db, orders_handler, [patient(), order("PL1", accession_number="ACC1",
                                                        study_instance_uid="1.2.3.4")])
    return db


def send(db: Database, handler: ReportsHandler, *records: dict[str, Any]) -> list[Outbound]:
    return apply_records(db, handler, list(records), ORU)


def fields(out: Outbound, segment: str) -> list[list[str]]:
    message = Message(out.payload.decode("utf-8"))
    return [seg.fields for seg in message.all(segment)]


def versions(db: Database) -> list[tuple[int, str, str]]:
    return db.writer.call(lambda c: [tuple(r) for r in c.execute(
        select(report_versions.c.version, report_versions.c.result_status, report_versions.c.text)
        .order_by(report_versions.c.id))])  # fmt: skip


def test_a_final_report_for_a_known_order_is_version_1_and_goes_to_the_ehr(ordered: Database, handler: ReportsHandler):
    out = send(ordered, handler, report("Final", "Line one.\nLine two."))
    assert versions(ordered) == [(1, "F", "Line one.\nLine two.")]
    assert [o.destination for o in out] == ["ehr"] and out[0].ordering_key == "P1"
    obr = fields(out[0], "OBR")[0]
    assert obr[2] == "PL1" and obr[18] == "ACC1" and obr[25] == "F"
    assert [(f[1], f[5], f[11]) for f in fields(out[0], "OBX")] == [("1", "Line one.", "F"), ("2", "Line two.", "F")]
    assert fields(out[0], "ORC")[0][1] == "RE"


def test_a_resent_identical_report_changes_nothing_and_sends_nothing(ordered: Database, handler: ReportsHandler):
    send(ordered, handler, report())
    ctx_out = send(ordered, handler, report())
    assert ctx_out == [] and versions(ordered) == [(1, "F", "No acute finding.")]


def test_a_correction_is_version_2_sent_whole_as_c_and_version_1_is_kept(ordered: Database, handler: ReportsHandler):
    send(ordered, handler, report("F", "First text."))
    out = send(ordered, handler, report("C", "Corrected text.\nSecond line."))
    assert versions(ordered) == [(1, "F", "First text."), (2, "C", "Corrected text.\nSecond line.")]
    assert fields(out[0], "OBR")[0][25] == "C"
    assert [f[5] for f in fields(out[0], "OBX")] == ["Corrected text.", "Second line."]
    row = ordered.writer.call(lambda c: c.execute(select(reports)).one())
    assert (row.version, row.status, row.result_status) == (2, "corrected", "C")


def test_a_final_after_a_final_is_sent_as_a_correction(ordered: Database, handler: ReportsHandler):
    send(ordered, handler, report("F", "Text."))
    out = send(ordered, handler, report("F", "Text.\nAddendum: compared with prior."))
    assert fields(out[0], "OBR")[0][25] == "C" and versions(ordered)[-1][:2] == (2, "C")


def test_preliminary_then_final_is_final(ordered: Database, handler: ReportsHandler):
    send(ordered, handler, report("Wet Read", "Prelim."))
    out = send(ordered, handler, report("Final", "Final text."))
    assert [v[:2] for v in versions(ordered)] == [(1, "P"), (2, "F")] and fields(out[0], "OBR")[0][25] == "F"


def test_a_preliminary_cannot_replace_a_final(ordered: Database, handler: ReportsHandler):
    send(ordered, handler, report("F", "Final."))
    with pytest.raises(HL7ApplicationError) as err:
        send(ordered, handler, report("P", "Late prelim."))
    assert err.value.code == 206 and str(err.value.location) == "OBR^1^25"


def test_a_cancelled_report_is_sent_as_x(ordered: Database, handler: ReportsHandler):
    send(ordered, handler, report("F", "Final."))
    out = send(ordered, handler, report("X", "", lines=[]))
    assert fields(out[0], "OBR")[0][25] == "X" and fields(out[0], "ORC")[0][5] == "CA"
    assert fields(out[0], "OBX") == []


def test_an_unlisted_status_is_refused_at_obr_25(ordered: Database, handler: ReportsHandler):
    with pytest.raises(HL7ApplicationError) as err:
        send(ordered, handler, report("Maybe"))
    assert err.value.code == 103 and str(err.value.location) == "OBR^1^25" and "report_status.csv" in err.value.text


def test_a_report_without_text_is_refused(ordered: Database, handler: ReportsHandler):
    with pytest.raises(HL7ApplicationError) as err:
        send(ordered, handler, report("F", lines=[{"value_type": "NM", "text": "12"}]))
    assert err.value.code == 101


PDF = "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K"


def attachments(db: Database) -> list[tuple[int, str, str]]:
    return db.writer.call(lambda c: [tuple(r) for r in c.execute(
        select(report_versions.c.version, report_versions.c.text, report_versions.c.attachments)
        .order_by(report_versions.c.id))])  # fmt: skip


def test_a_report_whose_only_content_is_a_pdf_is_kept_and_sent_on(ordered: Database, handler: ReportsHandler):
    """OBX|1|ED|...|^application^pdf^Base64^JVBERi0...: a PDF report. It was AE 101 ("no text")."""
    pdf = {"value_type": "ED", "observation_id": "PDF", "section": "body", "text": "",
           "media_type": "application", "media_subtype": "pdf", "encoding": "Base64", "data": PDF}
    out = send(ordered, handler, report("F", lines=[pdf]))
    [(version, text, kept)] = attachments(ordered)
    assert (version, text) == (1, "")
    assert json.loads(kept) == [{"media_type": "application", "media_subtype": "pdf", "encoding": "Base64",
                                 "data": PDF}]
    [obx] = fields(out[0], "OBX")
    assert (obx[2], obx[5], obx[11]) == ("ED", f"^application^pdf^Base64^{PDF}", "F")
    # the same PDF again is the same version; another PDF a new one
    assert send(ordered, handler, report("F", lines=[pdf])) == []
    send(ordered, handler, report("C", lines=[pdf | {"data": PDF + "Cg=="}]))
    assert [v for v, _, _ in attachments(ordered)] == [1, 2]


def test_a_report_with_text_and_a_pdf_sends_both(ordered: Database, handler: ReportsHandler):
    pdf = {"value_type": "ED", "media_type": "AP", "media_subtype": "PDF", "encoding": "Base64", "data": PDF}
    out = send(ordered, handler, report("F", "Normal.") | {"lines": [*report("F", "Normal.")["lines"], pdf]})
    assert [(f[1], f[2], f[5]) for f in fields(out[0], "OBX")] == [("1", "TX", "Normal."),
                                                                   ("2", "ED", f"^AP^PDF^Base64^{PDF}")]


def test_a_report_whose_text_is_in_nte_segments_is_kept_with_that_text(ordered: Database, handler: ReportsHandler):
    """OBR followed by NTE lines and no OBX (some RIS report modules): AE 101 before."""
    out = send(ordered, handler, report("F", lines=[], comments=[{"text": "CT head: normal."},
                                                               {"text": "No bleed.\nNo mass."}]))
    assert versions(ordered) == [(1, "F", "CT head: normal.\nNo bleed.\nNo mass.")]
    assert [f[5] for f in fields(out[0], "OBX")] == ["CT head: normal.", "No bleed.", "No mass."]


def test_nte_comments_beside_obx_text_are_not_the_report_text(ordered: Database, handler: ReportsHandler):
    send(ordered, handler, report("F", "Normal.", comments=[{"text": "dictated by Dr X"}]))
    assert versions(ordered) == [(1, "F", "Normal.")]


@pytest.mark.parametrize("identity", [
    {"placer_order_number": "", "filler_order_number": "", "accession_number": "ACC1"},
    {"placer_order_number": "", "filler_order_number": "", "study_instance_uid": "1.2.3.4"},
    {"placer_order_number": "OTHER", "filler_order_number": "", "accession_number": "ACC1"},
])
def test_the_order_is_found_by_accession_or_study_uid(ordered: Database, handler: ReportsHandler, identity):
    out = send(ordered, handler, report(**identity))
    assert len(out) == 1 and fields(out[0], "OBR")[0][2] == "PL1"


def test_a_report_for_an_unknown_order_waits_and_is_sent_when_the_order_arrives(
    db: Database, handler: ReportsHandler, orders_handler: OrdersHandler
):
    assert send(db, handler, report(placer_order_number="PL9", filler_order_number="")) == []
    row = db.writer.call(lambda c: c.execute(select(reports)).one())
    assert row.order_pk is None
    out = apply_records(db, orders_handler, [patient(), order("PL9")])
    assert out == []
    out = apply_records(db, handler, [patient(), order("PL9")])
    assert [o.destination for o in out] == ["ehr"] and fields(out[0], "OBR")[0][2] == "PL9"
    assert db.writer.call(lambda c: c.execute(select(reports.c.order_pk)).scalar_one()) is not None


def notes(db: Database, handler: ReportsHandler, *records: dict[str, Any]) -> list[str]:
    """The notes the handler leaves on one message (``messages show``) for ``records``."""
    ctx = context(list(records), ORU)
    db.writer.call(lambda conn: handler.apply(conn, ctx))
    return [o.note for o in ctx.outcomes]


def test_a_later_version_says_it_waits_only_while_its_order_is_unknown(
    db: Database, handler: ReportsHandler, orders_handler: OrdersHandler
):
    waiting = "no such order yet"
    apply_records(db, orders_handler, [patient(), order("PL1")])
    assert notes(db, handler, report("P", "Prelim.")) == [""]
    assert notes(db, handler, report("F", "Final.")) == [""]  # version 2 of a known order's report
    assert notes(db, handler, report("C", "Corrected.")) == [""]
    first, second = (notes(db, handler, report(s, t, placer_order_number="PL9", filler_order_number=""))
                     for s, t in (("P", "Prelim."), ("F", "Final.")))
    assert waiting in first[0] and waiting in second[0]  # still no order PL9


def test_a_report_for_an_unknown_order_is_refused_by_policy(db: Database, config: EngineConfig):
    strict = config.model_copy(update={"reports": config.reports.model_copy(update={"unknown_order": "reject"})})
    handler = ReportsHandler(report_policy(strict), receivers(strict))
    with pytest.raises(HL7ApplicationError) as err:
        send(db, handler, report(placer_order_number="PL9"))
    assert err.value.code == 204 and str(err.value.location) == "OBR^1^2"


def test_without_receivers_reports_are_kept_and_nothing_is_sent(ordered: Database, config: EngineConfig):
    handler = ReportsHandler(report_policy(config))
    assert send(ordered, handler, report()) == [] and versions(ordered) == [(1, "F", "No acute finding.")]


def test_a_report_without_pid_takes_its_orders_patient(ordered: Database, handler: ReportsHandler) -> None:
    """Polish KS-SOMED reporting feeds (public sample collections) send ORU^R01 as MSH, ORC, OBR, OBX: no PID.
    It was AE 101 at PID-3.1 and the report was lost to the EHR."""
    [out] = send(ordered, handler, report(patient_id="", issuer=""))

    assert versions(ordered) == [(1, "F", "No acute finding.")]
    assert fields(out, "PID")[0][3].startswith("P1^")  # the order's patient, sent on to the EHR


def test_a_report_without_pid_for_an_unknown_order_is_refused_at_pid_3(
    db: Database, handler: ReportsHandler
) -> None:
    with pytest.raises(HL7ApplicationError) as err:
        send(db, handler, report(patient_id="", issuer=""))

    assert (err.value.code, str(err.value.location)) == (101, "PID^1^3^1")
    assert versions(db) == []


def line(text: str, status: str = "F", value_type: str = "TX", **more: str) -> dict[str, Any]:
    return {"value_type": value_type, "observation_id": "GDT", "section": "body", "text": text,
            "result_status": status} | more


def test_obx_deleted_or_posted_as_wrong_is_not_the_reports_content(ordered: Database, handler: ReportsHandler):
    """hl7fix6: an OBX with OBX-11 D (delete it) or W (the earlier value was wrong, HL7 table 0085) was report
    text like any other: stored, in the conclusion and sent to the EHR. It is left out, and the note says so."""
    impression = line("Impression: bleed.", "W") | {"section": "impression", "observation_id": "IMP"}
    record = report("F", lines=[line("No bleed."), line("Left frontal bleed.", "W"), line("Old line.", "D"),
                                impression, line("Impression: normal.") | {"section": "impression"}],
                    comments=[{"text": "comment on the wrong line"}])
    ctx = context([record], ORU)
    out = ordered.writer.call(lambda conn: handler.apply(conn, ctx))
    assert versions(ordered) == [(1, "F", "No bleed.\nImpression: normal.")]
    row = ordered.writer.call(lambda c: c.execute(select(reports)).one())
    assert row.conclusion == "Impression: normal."
    assert [f[5] for f in fields(out[0], "OBX")] == ["No bleed.", "Impression: normal."]
    note = ctx.outcomes[0].note
    assert "OBX^2, OBX^4 left out of the report: OBX-11 W (posted as wrong" in note
    assert "OBX^3 left out of the report: OBX-11 D (delete the OBX" in note


def test_a_report_whose_every_obx_is_retracted_has_no_content(ordered: Database, handler: ReportsHandler):
    """Every line W and an NTE: the NTE is a comment on a wrong line, not the report (AE 101 saying why)."""
    with pytest.raises(HL7ApplicationError) as err:
        send(ordered, handler, report("F", lines=[line("Wrong patient.", "W")], comments=[{"text": "n"}]))
    assert (err.value.code, str(err.value.location)) == (101, "OBR^1") and "OBX^1" in err.value.text
    assert versions(ordered) == []


def test_an_rp_pointing_at_dicom_images_is_not_a_report(ordered: Database, handler: ReportsHandler):
    """hl7fix6: an ORU^R01 whose only OBX is an RP to the DICOM study (RP-3/RP-4 Application^DICOM) was stored
    as a final report with no text; it is AE 101 naming that OBX (ERR-2 counts OBX in the whole message)."""
    dicom = line("", value_type="RP", reference="1.2.840.99.1.7", application="PACS", media_type="Application",
                 media_subtype="DICOM")
    with pytest.raises(HL7ApplicationError) as err:
        send(ordered, handler, report("F", lines=[dicom]))
    assert (err.value.code, str(err.value.location)) == (101, "OBX^1^5") and "DICOM images" in err.value.text
    assert versions(ordered) == []
    second = report("F", lines=[dicom | {"media_type": "DICOM", "media_subtype": ""}], placer_order_number="PL2",
                    filler_order_number="")
    with pytest.raises(HL7ApplicationError) as err:  # the second OBR's only OBX, after two: OBX^3 of the message
        apply_records(ordered, handler, [report("F", "One.\nTwo."), second], ORU)
    assert (str(err.value.location), str(err.value.code)) == ("OBX^3^5", "101")


def test_an_rp_to_dicom_beside_text_leaves_the_text_and_says_so(ordered: Database, handler: ReportsHandler):
    dicom = line("", value_type="RP", reference="http://pacs/wado?studyUID=1.2.3", media_type="AP",
                 media_subtype="dicom")
    ctx = context([report("F", lines=[line("Normal."), dicom])], ORU)
    out = ordered.writer.call(lambda conn: handler.apply(conn, ctx))
    assert attachments(ordered) == [(1, "Normal.", "")]
    assert [f[2] for f in fields(out[0], "OBX")] == ["TX"]
    assert "OBX^2 left out of the report: RP AP^dicom points at DICOM images" in ctx.outcomes[0].note


def test_an_rp_to_a_pdf_document_is_still_the_report(ordered: Database, handler: ReportsHandler):
    pdf = line("", value_type="RP", reference="https://ris.example/doc/7", application="RIS",
               media_type="application", media_subtype="pdf")
    out = send(ordered, handler, report("F", lines=[pdf]))
    assert [f[2] for f in fields(out[0], "OBX")] == ["RP"] and json.loads(attachments(ordered)[0][2])


def test_an_ed_document_that_cannot_be_decoded_is_kept_and_said(ordered: Database, handler: ReportsHandler):
    """hl7fix6: Base64 that does not decode was silently missing from FHIR presentedForm; it is still kept and
    sent on as received, and the message's note says FHIR cannot offer it."""
    broken = line("", value_type="ED", media_type="AP", media_subtype="PDF", encoding="Base64", data="JVBERi0xA")
    ctx = context([report("F", lines=[line("Normal."), broken])], ORU)
    out = ordered.writer.call(lambda conn: handler.apply(conn, ctx))
    assert json.loads(attachments(ordered)[0][2])[0]["data"] == "JVBERi0xA"
    assert [f[2] for f in fields(out[0], "OBX")] == ["TX", "ED"]
    assert "OBX^2 ED data is not readable as Base64" in ctx.outcomes[0].note


def test_a_carriage_return_in_the_text_is_a_line_break(ordered: Database, handler: ReportsHandler):
    """hl7fix6: ``\\X0D\\`` and ``\\X0D0A\\`` (hex escapes some reporting systems use for a line break) decode to CR
    and CR LF; the CR stayed in the stored text, the FHIR text and the ORU^R01 to the EHR. It is a line break."""
    out = send(ordered, handler, report("F", lines=[line("One\rtwo\r\nthree")]))
    assert versions(ordered) == [(1, "F", "One\ntwo\nthree")]
    assert [f[5] for f in fields(out[0], "OBX")] == ["One", "two", "three"]


def test_obx_carrying_dicom_uids_are_not_report_text(ordered: Database, handler: ReportsHandler):
    """hl7fix6, from the corpus (dcm4che ORU^R01 SR/CDA, IHE RAD style): ST OBX ``113014^DICOM Study^DCM``,
    ``^Series Instance UID``, ``^SR Instance UID`` put three UIDs at the head of the report text the EHR and FHIR
    clients read. They name the images: left out, said; only UIDs and no document is AE 101 naming the OBX."""
    uids = [line("1.2.392.200036.9125.0.198811291108.7", value_type="ST") | {"observation_id": "113014"},
            line("1.2.392.200036.9125.0.198811291108.7.1", value_type="ST") | {"observation_id": ""}]
    ctx = context([report("F", lines=[*uids, line("The right kidney is slightly enlarged."), line("1.2.3")])], ORU)
    out = ordered.writer.call(lambda conn: handler.apply(conn, ctx))
    assert versions(ordered) == [(1, "F", "The right kidney is slightly enlarged.\n1.2.3")]
    assert [f[5] for f in fields(out[0], "OBX")] == ["The right kidney is slightly enlarged.", "1.2.3"]
    note = ctx.outcomes[0].note
    assert "OBX^1, OBX^2 left out of the report: a DICOM UID" in note
    with pytest.raises(HL7ApplicationError) as err:
        send(ordered, handler, report("F", lines=uids, placer_order_number="PL2", filler_order_number=""))
    assert (err.value.code, str(err.value.location)) == (101, "OBX^1^5")


def test_a_document_posted_as_wrong_is_not_kept(ordered: Database, handler: ReportsHandler):
    """OBX-11 W on an ED: the PDF sent earlier was wrong; it is not this version's document (nor presentedForm)."""
    wrong = line("", "W", value_type="ED", media_type="AP", media_subtype="PDF", encoding="Base64", data=PDF)
    out = send(ordered, handler, report("C", lines=[line("Corrected text.", "C"), wrong]))
    assert attachments(ordered) == [(1, "Corrected text.", "")]
    assert [f[2] for f in fields(out[0], "OBX")] == ["TX"]
