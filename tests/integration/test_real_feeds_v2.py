"""More shapes of real HL7 v2 radiology feeds, sent by python-hl7's MLLP client to the engine on the
shipped ``config/`` and ``mappings/`` (feeds4 campaign; tests/integration/test_real_feeds.py has the first).

The messages are written for these tests; each reproduces a shape read in other engines' and toolkits'
test data or in interface specifications (v2.2/2.3 patient ids in PID-2, PDF reports in OBX ED, reports
in NTE, batch trailers with a wrong count, filler order control codes). Each checks the ACK and what the
store holds afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import Ack
from tests.integration.test_quickstart import Engine, start_engine
from tests.integration.test_real_feeds import _er7, _rows, _send, _shown
from tests.integration.test_workflow_e2e import findscu

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = start_engine(tmp_path_factory.mktemp("feeds"), ROOT / "config")
    yield engine
    engine.stop()


def _report(engine: Engine, *messages: bytes) -> list[Ack]:
    return _send(engine, *messages, port=int(engine.env["RADBRIDGE_REPORTS_MLLP_PORT"]))


def _nw(control_id: str, patient_id: str, number: str) -> bytes:
    return _er7(f"""
        MSH|^~\\&|RIS|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520090000||ORM^O01|{control_id}|P|2.3.1
        PID|1||{patient_id}^^^WESTSIDE^MR||Lund^Erik||19700101|M
        ORC|NW|PL-{number}^RIS|FL-{number}^RIS||SC
        OBR|1|PL-{number}^RIS|FL-{number}^RIS|CTABD^CT abdomen^L|||20240520090000|||||||||||ACC-{number}||||||CT
        """)


def test_a_v23_order_with_its_patient_id_only_in_pid_2_reaches_the_worklist(shipped: Engine, tmp_path: Path) -> None:
    """HL7 v2.2/2.3 feeds (PID-2 'patient id (external)', deprecated in v2.3.1) that leave PID-3 empty:
    AE 101 at PID^1^3^1 before; now PID-2 is the patient id when PID-3 has none."""
    message = _er7("""
        MSH|^~\\&|RIS|OLDSITE|RADBRIDGE|RADIOLOGY|20240520090000||ORM^O01|PID2A|P|2.3
        PID|1|P2-71001^^^OLDSITE|||Holm^Vera||19600606|F
        ORC|NW|PL-P2A^RIS|FL-P2A^RIS||SC
        OBR|1|PL-P2A^RIS|FL-P2A^RIS|CTABD^CT abdomen^L|||20240520090000|||||||||||ACC-P2A||||||CT
        """)

    [ack] = _send(shipped, message)

    assert ack.code == "AA", ack.raw
    [found] = findscu(shipped.dicom, tmp_path, "AccessionNumber=ACC-P2A", "PatientID=", "IssuerOfPatientID=")
    assert (found.PatientID, found.IssuerOfPatientID) == ("P2-71001", "OLDSITE")


def test_a_batch_whose_bts_count_is_wrong_is_accepted_and_each_message_says_so(shipped: Engine) -> None:
    """A PAS batch file whose trailer miscounts (BTS|3 over two messages, FTS|2 over one batch): both
    messages were accepted without a word; now each message's note says the count was wrong."""
    batch = _er7("""
        FHS|^~\\&|PAS|GENHOSP|RADBRIDGE|RADIOLOGY|20240402090100||||FILE07
        BHS|^~\\&|PAS|GENHOSP|RADBRIDGE|RADIOLOGY|20240402090100||||BATCH07
        MSH|^~\\&|PAS|GENHOSP|RADBRIDGE|RADIOLOGY|20240402090100||ADT^A08|BC0001|P|2.5
        EVN|A08|20240402090100
        PID|1||BC-1^^^GENHOSP^MR||LIS^MAREK||19800808|M
        MSH|^~\\&|PAS|GENHOSP|RADBRIDGE|RADIOLOGY|20240402090101||ADT^A08|BC0002|P|2.5
        EVN|A08|20240402090101
        PID|1||BC-2^^^GENHOSP^MR||NOWAK^EWA||19720101|F
        BTS|3
        FTS|2
        """)

    [ack] = _send(shipped, batch)

    assert ack.codes == ["AA", "AA"]
    for control_id in ("BC0001", "BC0002"):
        note = _shown(shipped, control_id)["note"]
        assert "BTS-1 says 3 message(s), the batch holds 2" in note, note
        assert "FTS-1 says 2 batch(es), the file holds 1" in note, note
    assert "BTS-1 says 3 message(s)" in shipped.log.read_text()


def _follow_up(control_id: str, control: str, number: str, status: str = "", obr_tail: str = "") -> bytes:
    return _er7(f"""
        MSH|^~\\&|RIS|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520091000||ORM^O01|{control_id}|P|2.3.1
        ORC|{control}|PL-{number}^RIS|FL-{number}^RIS||{status}
        OBR|1|PL-{number}^RIS|FL-{number}^RIS{obr_tail}
        """)


def test_the_fillers_answers_xx_and_cr_change_and_cancel_and_a_hold_is_refused(
        shipped: Engine, tmp_path: Path) -> None:
    """A RIS passing on the filler's answers (table 0119): XX 'changed as requested' with a new
    procedure, CR 'canceled as requested'. Both were AE 103 at ORC-1 and the worklist kept the old
    procedure, then the cancelled exam. A hold (HD) is still refused, AE 103 at ORC-1, not a silent AA."""
    [created] = _send(shipped, _nw("XXCR1", "W-64001", "XXCR1"))
    assert created.code == "AA", created.raw
    changed = _follow_up("XXCR2", "XX", "XXCR1", "SC", "|CTCHE^CT chest^L|||20240520090000|||||||||||ACC-XXCR1||||||CT")

    [xx, hold, cr] = _send(shipped, changed, _follow_up("XXCR3", "HD", "XXCR1"),
                           _follow_up("XXCR4", "CR", "XXCR1", "CA"))

    assert xx.code == "AA", xx.raw
    assert hold.code == "AE", hold.raw
    assert hold.all("ERR")[0][2] == "ORC^1^1"
    assert cr.code == "AA", cr.raw
    [(procedure, status)] = _rows(shipped, "SELECT o.requested_procedure_description, s.status FROM orders o JOIN "
                                           "procedure_steps s ON s.order_pk = o.id WHERE o.placer_order_number = "
                                           "'PL-XXCR1'")
    assert (procedure, status) == ("CT chest", "CANCELED")
    assert findscu(shipped.dicom, tmp_path, "AccessionNumber=ACC-XXCR1") == []


PDF = "JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoKdHJhaWxlcjw8L1Jvb3QgMSAwIFI+PgolJUVPRgo="


def test_reports_whose_content_is_a_pdf_or_nte_lines_are_kept(shipped: Engine) -> None:
    """Reporting systems that send the signed report as a PDF (OBX ED, Base64) and nothing else, and RIS
    report modules that send the text in NTE after the OBR: both were AE 101 ('no text') and the report was
    lost. Now both are report versions: the PDF kept as received, the NTE lines as the text."""
    [a, b] = _send(shipped, _nw("RPDF1", "W-65001", "RPDF1"), _nw("RNTE1", "W-65002", "RNTE1"))
    assert (a.code, b.code) == ("AA", "AA"), (a.raw, b.raw)
    pdf = _er7(f"""
        MSH|^~\\&|RAD|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520100000||ORU^R01|RPDF2|P|2.5.1
        PID|1||W-65001^^^WESTSIDE^MR||Lund^Erik
        OBR|1|PL-RPDF1^RIS|FL-RPDF1^RIS|CTABD^CT abdomen^L|||20240520093000||||||||||||||||||F
        OBX|1|ED|PDF^Radiology report^L||^application^pdf^Base64^{PDF}||||||F
        """)
    nte = _er7("""
        MSH|^~\\&|RAD|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520100000||ORU^R01|RNTE2|P|2.3
        PID|1||W-65002^^^WESTSIDE^MR||Lund^Erik
        OBR|1|PL-RNTE1^RIS|FL-RNTE1^RIS|CTABD^CT abdomen^L|||20240520093000||||||||||||||||||F
        NTE|1|L|CT abdomen: no free fluid.
        NTE|2|L|Liver normal.
        """)

    [kept_pdf, kept_nte] = _report(shipped, pdf, nte)

    assert kept_pdf.code == "AA", kept_pdf.raw
    assert kept_nte.code == "AA", kept_nte.raw
    [(text, attachments)] = _rows(shipped, "SELECT v.text, v.attachments FROM report_versions v JOIN reports r ON "
                                           "r.id = v.report_pk WHERE r.placer_order_number = 'PL-RPDF1'")
    assert text == "" and json.loads(attachments) == [
        {"media_type": "application", "media_subtype": "pdf", "encoding": "Base64", "data": PDF}]
    [(text,)] = _rows(shipped, "SELECT v.text FROM report_versions v JOIN reports r ON r.id = v.report_pk "
                               "WHERE r.placer_order_number = 'PL-RNTE1'")
    assert text == "CT abdomen: no free fluid.\nLiver normal."
