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
