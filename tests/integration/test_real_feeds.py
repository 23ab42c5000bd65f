"""Shapes of real HL7 v2 feeds, sent by python-hl7's MLLP client to the engine on the shipped
``config/`` and ``mappings/`` (hl7corpus campaign, issue #11).

The messages are written for these tests; each reproduces something read in other engines' and
toolkits' test data (older PAS/MPI merge events, RIS status changes, v2.2 LF-terminated files,
BOMs, Z-segments, batch files). Each checks the ACK and what the store holds afterwards.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import Ack, Sender
from tests.integration.test_quickstart import BIN, Engine, start_engine
from tests.integration.test_workflow_e2e import findscu

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = start_engine(tmp_path_factory.mktemp("feeds"), ROOT / "config")
    yield engine
    engine.stop()


def _send(engine: Engine, *messages: bytes, port: int | None = None) -> list[Ack]:
    async def go() -> list[Ack]:
        sender = Sender(port or engine.mllp, timeout=30)
        try:
            return [await sender.send(m) for m in messages]
        finally:
            await sender.close()

    return asyncio.run(go())


def _er7(text: str, terminator: str = "\r", encoding: str = "utf-8") -> bytes:
    lines = [line.strip() for line in text.strip().splitlines()]
    return (terminator.join(lines) + terminator).encode(encoding)


def _rows(engine: Engine, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(Path(engine.env["RADBRIDGE_DATA_DIR"]) / "radbridge.db") as conn:
        return conn.execute(sql, params).fetchall()


def _patient(engine: Engine, patient_id: str) -> tuple[Any, ...]:
    [row] = _rows(engine, "SELECT patient_name, status, merged_into_id FROM patients WHERE patient_id = ?", patient_id)
    return row


def _a04(control_id: str, patient_id: str, name: str) -> bytes:
    return _er7(f"""
        MSH|^~\\&|PAS|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520070000||ADT^A04^ADT_A01|{control_id}|P|2.5
        EVN|A04|20240520070000
        PID|1||{patient_id}^^^WESTSIDE^MR||{name}||19590611|F
        PV1|1|O
        """)


#: Merge events older PAS and MPI feeds still send instead of A40: same PID (survivor) and MRG (prior).
MERGES = {"A18": "2.2", "A34": "2.3", "A36": "2.3.1", "A39": "2.4"}


@pytest.mark.parametrize("event", sorted(MERGES))
def test_an_older_merge_event_merges_the_prior_patient_into_the_survivor(shipped: Engine, event: str) -> None:
    survivor, prior = f"W-{event}-1", f"W-{event}-2"
    _send(shipped, _a04(f"REG{event}1", survivor, "Haugen^Sigrid"), _a04(f"REG{event}2", prior, "Haugen^Sigrid"))
    merge = _er7(f"""
        MSH|^~\\&|PAS|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520071500||ADT^{event}|MRG{event}|P|{MERGES[event]}
        EVN|{event}|20240520071500
        PID|1||{survivor}^^^WESTSIDE^MR||Haugen^Sigrid^E||19590611|F
        MRG|{prior}^^^WESTSIDE^MR
        """)

    [ack] = _send(shipped, merge)

    assert ack.code == "AA", ack.raw
    assert _patient(shipped, prior)[1] == "MERGED"
    assert _patient(shipped, survivor)[:2] == ("Haugen^Sigrid^E", "ACTIVE")


def test_an_a28_from_an_mpi_registers_the_person(shipped: Engine) -> None:
    a28 = _er7("""
        MSH|^~\\&|MPI|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520072000||ADT^A28^ADT_A05|MPI40021|P|2.5
        EVN|A28|20240520072000
        PID|1||W-30117^^^WESTSIDE^MR~19870402-2231^^^SKV^NI||Berglund^Oskar||19870402|M
        PV1|1|N
        """)

    [ack] = _send(shipped, a28)

    assert ack.code == "AA", ack.raw
    assert _patient(shipped, "W-30117")[:2] == ("Berglund^Oskar", "ACTIVE")


def _order(control_id: str, control: str, status: str, number: str, obr_tail: str = "") -> bytes:
    return _er7(f"""
        MSH|^~\\&|RIS|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520080000||ORM^O01|{control_id}|P|2.3.1
        PID|1||W-50001^^^WESTSIDE^MR||Lund^Erik||19700101|M
        ORC|{control}|PL-{number}^RIS|FL-{number}^RIS||{status}
        OBR|1|PL-{number}^RIS|FL-{number}^RIS|CTABD^CT abdomen^L{obr_tail}
        """)


def _step_status(engine: Engine, number: str) -> str:
    [(status,)] = _rows(engine, "SELECT s.status FROM procedure_steps s JOIN orders o ON o.id = s.order_pk "
                                "WHERE o.placer_order_number = ?", f"PL-{number}")
    return str(status)


NEW_CT = "|" * 14 + "ACC-{n}" + "|" * 6 + "CT"  # OBR-18 accession, OBR-24 CT


@pytest.mark.parametrize(("control", "status", "expected"), [
    ("SC", "IP", "STARTED"),  # the RIS says the exam is in process
    ("SC", "CA", "CANCELED"),
    ("SC", "DC", "DISCONTINUED"),
    ("OC", "", "CANCELED"),  # the filler cancelled the order
    ("OC", "CA", "CANCELED"),
    # Refused AE 103 at ORC-1 before, the step left on the worklist: a discontinue whose ORC-5 says
    # discontinued too, and the filler's "order discontinued" (table 0119 OD), alone or with a status.
    ("DC", "DC", "DISCONTINUED"),
    ("OD", "", "DISCONTINUED"),
    ("OD", "DC", "DISCONTINUED"),
    ("OD", "CA", "DISCONTINUED"),
])
def test_a_ris_status_change_with_only_orc_and_a_minimal_obr_moves_the_step(
        shipped: Engine, control: str, status: str, expected: str) -> None:
    number = f"{control}{status}9"
    [created] = _send(shipped, _order(f"NW{number}", "NW", "SC", number, NEW_CT.format(n=number)))
    assert created.code == "AA", created.raw

    [ack] = _send(shipped, _order(f"ST{number}", control, status, number))

    assert ack.code == "AA", ack.raw
    assert _step_status(shipped, number) == expected


#: Shapes read in other projects' test data; each must be AA and leave the patient's name readable.
SHAPES = {
    "v2.2, LF terminators, repeated PID-3 with authorities, a Z-segment": (_er7("""
        MSH|^~\\&|PAS|GENHOSP|RADBRIDGE|RADIOLOGY|199912271408||ADT^A04|SH0001|P|2.2
        EVN|A04|199912271408
        PID|||SH-100^^^GENHOSP^MR~555443333^^^USSSA^SS||KOWALSKI^PIOTR^J||19561107|M
        PV1||O|CLINIC^^^GENHOSP
        ZPI|1|VIP|Y
        """, "\n"), "SH-100", "KOWALSKI^PIOTR^J"),
    "v2.3, CRLF terminators, escapes, empty trailing fields": (_er7("""
        MSH|^~\\&|ADT1|MCM|RADBRIDGE|RADIOLOGY|200501011230||ADT^A08|SH0002|P|2.3|||||
        EVN|A08|200501011230||||
        PID|1||SH-101^^^GENHOSP^MR||O\\T\\BRIEN^SEAN||19561107|M|||42 ELM ST^^SPRINGFIELD||||||||||
        PV1|1|I|W1^101^A|||||||||||||||
        """, "\r\n"), "SH-101", "O&BRIEN^SEAN"),
    "v2.8, MSH-18 8859/1 in Latin-1, a time zone in MSH-7": (_er7("""
        MSH|^~\\&|HIS|KLINIK|RADBRIDGE|RADIOLOGY|20240315083000+0100||ADT^A01^ADT_A01|SH0003|P|2.8|||AL|NE|DEU|8859/1
        EVN||20240315083000
        PID|1||SH-102^^^KLINIK^PI||Müller^Jürgen||19650202|M
        PV1|1|I|STAT1^12^3
        """, encoding="latin-1"), "SH-102", "Müller^Jürgen"),
    "MSH-18 8859/2, a hex escape for a Polish letter (\\XB3\\ is 'ł' there, '³' in Latin-1)": (_er7("""
        MSH|^~\\&|HIS|SZPITAL|RADBRIDGE|RADIOLOGY|20240520070000||ADT^A08|SH0005|P|2.5||||||8859/2
        EVN|A08|20240520070000
        PID|1||SH-104^^^SZPITAL^MR||Kowalska^Ma\\XB3\\gorzata||19700101|F
        """, encoding="iso8859-2"), "SH-104", "Kowalska^Małgorzata"),
    "a UTF-8 byte order mark before MSH, MSH-18 UNICODE UTF-8": (b"\xef\xbb\xbf" + _er7("""
        MSH|^~\\&|HIS|KLINIK|RADBRIDGE|RADIOLOGY|20240315083100||ADT^A31^ADT_A05|SH0004|P|2.5||||||UNICODE UTF-8
        EVN|A31|20240315083100
        PID|1||SH-103^^^KLINIK^PI||Øberg^Åsa||19650202|F
        """), "SH-103", "Øberg^Åsa"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_real_feed_shape_is_accepted_and_read(shipped: Engine, shape: str) -> None:
    message, patient_id, name = SHAPES[shape]

    [ack] = _send(shipped, message)

    assert ack.code == "AA", ack.raw
    assert _patient(shipped, patient_id)[0] == name


def test_a_batch_file_with_fhs_and_bhs_gets_one_aa_per_message(shipped: Engine) -> None:
    batch = _er7("""
        FHS|^~\\&|PAS|GENHOSP|RADBRIDGE|RADIOLOGY|20240402090100||||FILE01
        BHS|^~\\&|PAS|GENHOSP|RADBRIDGE|RADIOLOGY|20240402090100||||BATCH01
        MSH|^~\\&|PAS|GENHOSP|RADBRIDGE|RADIOLOGY|20240402090100||ADT^A08|BT0001|P|2.5
        EVN|A08|20240402090100
        PID|1||BT-1^^^GENHOSP^MR||LIS^MAREK||19800808|M
        MSH|^~\\&|PAS|GENHOSP|RADBRIDGE|RADIOLOGY|20240402090101||ADT^A08|BT0002|P|2.5
        EVN|A08|20240402090101
        PID|1||BT-2^^^GENHOSP^MR||NOWAK^EWA||19720101|F
        BTS|2
        FTS|1
        """)

    [ack] = _send(shipped, batch)

    assert ack.codes == ["AA", "AA"]
    assert _patient(shipped, "BT-2")[0] == "NOWAK^EWA"


def _shown(engine: Engine, control_id: str) -> dict[str, Any]:
    [(row_id,)] = _rows(engine, "SELECT id FROM messages WHERE control_id = ?", control_id)
    shown = engine.sh(f"{BIN}/radbridge --config {ROOT / 'config'} messages show {row_id} --json")
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def test_a_message_whose_msh18_does_not_fit_its_bytes_is_read_and_says_so(shipped: Engine) -> None:
    """A sender declaring UTF-8 and sending Latin-1: read by the channel's fallback, noted on the message."""
    message = _er7("""
        MSH|^~\\&|PAS|GENHOSP|RADBRIDGE|RADIOLOGY|20240402090400||ADT^A08|CS0001|P|2.5||||||UNICODE UTF-8
        EVN|A08|20240402090400
        PID|1||CS-600^^^GENHOSP^MR||GÓMEZ^JOSÉ||19800808|M
        """, encoding="latin-1")

    [ack] = _send(shipped, message)

    assert ack.code == "AA", ack.raw
    assert _patient(shipped, "CS-600")[0] == "GÓMEZ^JOSÉ"
    assert _shown(shipped, "CS0001")["note"] == (
        "MSH-18 'UNICODE UTF-8' does not decode these bytes: read as latin-1 (source.charset_fallback)")


def _nw(control_id: str, patient_id: str, name: str, number: str) -> bytes:
    return _er7(f"""
        MSH|^~\\&|RIS|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520090000||ORM^O01|{control_id}|P|2.3.1
        PID|1||{patient_id}^^^WESTSIDE^MR||{name}||19700101|M
        ORC|NW|PL-{number}^RIS|FL-{number}^RIS||SC
        OBR|1|PL-{number}^RIS|FL-{number}^RIS|CTABD^CT abdomen^L{NEW_CT.format(n=number)}
        """)


def test_an_order_number_of_another_patient_is_refused_and_the_order_stays_with_its_patient(shipped: Engine) -> None:
    [first] = _send(shipped, _nw("OWN1", "W-61001", "Lund^Erik", "OWN1"))
    assert first.code == "AA", first.raw

    [ack] = _send(shipped, _nw("OWN2", "W-61002", "Berg^Nils", "OWN1"))

    assert ack.code == "AE", ack.raw
    assert ack.all("ERR")[0][2] == "ORC^1^2"
    [(owner,)] = _rows(shipped, "SELECT p.patient_id FROM orders o JOIN patients p ON p.id = o.patient_pk "
                                "WHERE o.placer_order_number = 'PL-OWN1'")
    assert owner == "W-61001"
    assert _shown(shipped, "OWN2")["status"] == "ERROR"



def test_a_cancel_without_pid_cancels_the_order_its_orc_2_names(shipped: Engine) -> None:
    """ORM^O01's patient group is optional; a Polish HIS (CLININET, seen in a public collection of KS-SOMED
    sample messages) cancels with MSH, ORC, OBR and NTE alone. It was AE 101 at PID-3.1 and the step stayed
    SCHEDULED on the worklist; an order without PID that is new is still refused, at PID-3.1."""
    [created] = _send(shipped, _nw("NOPID1", "W-62001", "Konieczna^Franciszka", "NOPID1"))
    assert created.code == "AA", created.raw
    cancel = _er7("""
        MSH|^~\\&|CLININET|UHC|RADBRIDGE|RADIOLOGY|20240520091000||ORM^O01|NOPID2|P|2.3|||AL|NE|POL||PL|
        ORC|CA|PL-NOPID1^RIS|||||||||||
        OBR||PL-NOPID1^RIS||CTABD^CT abdomen^L|||||||||||||||||||||||||||
        NTE|1|P|*** anulowanie ***
        """)
    new = _er7("""
        MSH|^~\\&|CLININET|UHC|RADBRIDGE|RADIOLOGY|20240520091100||ORM^O01|NOPID3|P|2.3
        ORC|NW|PL-NOPID3^RIS|||SC
        OBR|1|PL-NOPID3^RIS||CTABD^CT abdomen^L||||||||||||||ACC-NOPID3||||||CT
        """)

    [ack, refused] = _send(shipped, cancel, new)

    assert ack.code == "AA", ack.raw
    assert _step_status(shipped, "NOPID1") == "CANCELED"
    # listed under the order's patient and accession, which the message did not carry
    [accession] = _rows(shipped, "SELECT accession_number FROM orders WHERE placer_order_number = 'PL-NOPID1'")[0]
    assert (_shown(shipped, "NOPID2")["patient_id"], _shown(shipped, "NOPID2")["accession_number"]) == (
        "W-62001", accession)
    listed = shipped.sh(f"{BIN}/radbridge --config {ROOT / 'config'} messages list --patient-id W-62001 --json")
    assert "NOPID2" in [row["control_id"] for row in json.loads(listed.stdout)], listed.stderr
    assert refused.code == "AE", refused.raw
    assert refused.all("ERR")[0][2] == "PID^1^3^1"
    assert _rows(shipped, "SELECT count(*) FROM orders WHERE placer_order_number = 'PL-NOPID3'") == [(0,)]


def test_escapes_line_breaks_and_a_time_zone_reach_the_worklist_as_dicom_values(
        shipped: Engine, tmp_path: Path) -> None:
    """A German RIS's Latin-1 order: \\X..\\ in the name, \\T\\ and \\.br\\ in the procedure text, a tab in the
    protocol text, ORC-7.4 with +0100. The worklist returned the line break and the tab inside LO values
    (DICOM allows no control character there); the rest was already right and stays so."""
    obr = "|".join(["OBR", "1", "PL-ESC1^KIS", "FL-ESC1^RIS",
                    "CTTHX^CT Thorax\\T\\Abdomen\\.br\\mit KM^L^P1^Protokoll\t1^L", *[""] * 13,
                    "ACC-ESC1", "RP-ESC1", "SPS-ESC1", "", "", "", "CT"])
    message = _er7(f"""
        MSH|^~\\&|RIS|KLINIK|RADBRIDGE|RADIOLOGY|20240315083000+0100||ORM^O01^ORM_O01|ESC0001|P|2.5|||AL|NE|DEU|8859/1
        PID|1||ESC-1^^^KLINIK^PI~998877^^^GKV^NI||M\\XFC\\ller-L\\XFC\\denscheid^J\\XFC\\rgen^^^Dr.||19650202|M
        PV1|1|O|RAD^^^KLINIK
        ORC|NW|PL-ESC1^KIS|FL-ESC1^RIS||SC||^^^20240316093000+0100^^S||20240315083000+0100
        {obr}
        """, encoding="latin-1")

    [ack] = _send(shipped, message)

    assert ack.code == "AA", ack.raw
    [found] = findscu(shipped.dicom, tmp_path, "AccessionNumber=ACC-ESC1", "PatientName=",
                      "RequestedProcedureDescription=", "RequestedProcedureCodeSequence[0].CodeMeaning=",
                      "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription=",
                      "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=",
                      "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=")
    step = found.ScheduledProcedureStepSequence[0]
    assert str(found.PatientName) == "Müller-Lüdenscheid^Jürgen^^Dr."
    assert found.RequestedProcedureDescription == "CT Thorax&Abdomen mit KM"
    assert found.RequestedProcedureCodeSequence[0].CodeMeaning == "CT Thorax&Abdomen mit KM"
    assert step.ScheduledProcedureStepDescription == "Protokoll 1"
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20240316", "083000")


def test_a_report_without_pid_is_kept_with_its_order(shipped: Engine) -> None:
    """Polish KS-SOMED reporting feeds send ORU^R01 as MSH, ORC, OBR, OBX (FT with \\.br\\), in CP1250:
    no PID. It was AE 101 at PID-3.1; now the report finds its order by ORC-2/OBR-2 and takes its patient.
    A report without PID whose order is unknown is still refused, at PID-3.1: nothing to keep it under."""
    [created] = _send(shipped, _nw("RPID1", "W-63001", "Filipiak^Elżbieta", "RPID1"))
    assert created.code == "AA", created.raw

    def oru(control_id: str, number: str) -> bytes:
        return _er7(f"""
            MSH|^~\\&|SYZ1||SZPM||20240520100000||ORU^R01|{control_id}|P|2.3|||||PL|CP1250|PL
            ORC|RE|PL-{number}^RIS|
            OBR|1|PL-{number}^RIS||CTABD|||20240520093300||||||||||||||||||F|
            OBX|1|FT|||Wątroba prawidłowa.\\.br\\Wniosek: obraz prawidłowy.||||||F|||20240520093800|
            """, encoding="cp1250")

    async def go() -> list[Ack]:
        sender = Sender(int(shipped.env["RADBRIDGE_REPORTS_MLLP_PORT"]), timeout=30)
        try:
            return [await sender.send(oru("RPID2", "RPID1")), await sender.send(oru("RPID3", "RPID9"))]
        finally:
            await sender.close()

    [kept, refused] = asyncio.run(go())

    assert kept.code == "AA", kept.raw
    [(patient_id, text)] = _rows(shipped, "SELECT p.patient_id, r.text FROM reports r JOIN orders o ON o.id = "
                                          "r.order_pk JOIN patients p ON p.id = r.patient_pk "
                                          "WHERE o.placer_order_number = 'PL-RPID1'")
    assert (patient_id, text) == ("W-63001", "Wątroba prawidłowa.\nWniosek: obraz prawidłowy.")
    assert _shown(shipped, "RPID2")["patient_id"] == "W-63001"  # listed under its order's patient
    assert refused.code == "AE", refused.raw
    assert refused.all("ERR")[0][2] == "PID^1^3^1"


def test_one_orc_with_two_obrs_is_refused_at_the_second_obr_instead_of_dropping_it(shipped: Engine) -> None:
    """A RIS ordering CT head and CT neck under one ORC (one placer number, two filler numbers and accessions)
    was answered AA with only CT head on the worklist: the CT neck went nowhere."""
    obr = "|".join(["OBR", "{n}", "PL-MULTI^RIS", "FL-MULTI{n}^RIS", "{code}", *[""] * 13, "ACC-MULTI{n}",
                    "", "", "", "", "", "CT"])
    message = _er7(f"""
        MSH|^~\\&|RIS|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520080000||ORM^O01|MULTI1|P|2.3.1
        PID|1||W-70001^^^WESTSIDE^MR||Lund^Erik||19700101|M
        ORC|NW|PL-MULTI^RIS|FL-MULTI1^RIS||SC
        {obr.format(n=1, code="CTHEAD^CT head^L")}
        {obr.format(n=2, code="CTNECK^CT neck^L")}
        """)

    [ack] = _send(shipped, message)

    assert ack.code == "AE", ack.raw
    assert ack.all("ERR")[0][2] == "OBR^2"
    assert _rows(shipped, "SELECT count(*) FROM orders WHERE placer_order_number = 'PL-MULTI'") == [(0,)]
    assert _shown(shipped, "MULTI1")["status"] == "ERROR"


def test_an_nw_replayed_after_the_exam_is_completed_stays_off_the_worklist(shipped: Engine, tmp_path: Path) -> None:
    """An interface engine replaying its queue after an outage resends the NW (new control id) once the RIS has
    said the exam is complete: it was AA and the step SCHEDULED again, so the CT was offered for a second scan."""
    nw = _order("RPL1", "NW", "SC", "RPL9", NEW_CT.format(n="RPL9"))
    [created, completed, replayed] = _send(shipped, nw, _order("RPL2", "SC", "CM", "RPL9"),
                                           nw.replace(b"|RPL1|", b"|RPL3|"))

    assert [created.code, completed.code, replayed.code] == ["AA", "AA", "AA"]
    assert _step_status(shipped, "RPL9") == "COMPLETED"
    assert findscu(shipped.dicom, tmp_path, "AccessionNumber=ACC-RPL9") == []
    assert _shown(shipped, "RPL3")["status"] == "UNCHANGED"
    assert "left the step COMPLETED" in _shown(shipped, "RPL3")["note"]


def test_a_japanese_order_s_name_repetitions_reach_the_worklist_as_pn_component_groups(
        shipped: Engine, tmp_path: Path) -> None:
    """A Japanese HIS sends the patient's name three times in PID-5 (XPN-8 A, I and P: alphabetic,
    kanji, kana), in UTF-8. Only the first repetition was read: the kanji and kana names were lost.
    DICOM holds all three in one PN (PS3.5 6.2.1.2), and findscu reads them back; a query by the
    alphabetic name alone still finds the step."""
    obr = "|".join(["OBR", "1", "PL-JP1^HIS", "FL-JP1^RIS", "CTHEAD^CT head^L", *[""] * 13,
                    "ACC-JP1", "RP-JP1", "SPS-JP1", "", "", "", "CT"])
    message = _er7(f"""
        MSH|^~\\&|HIS|KYOTO|RADBRIDGE|RADIOLOGY|20261201090000||ORM^O01|JP0001|P|2.5|||AL|NE|JPN|UNICODE UTF-8
        PID|1||JP-1^^^KYOTO^PI||Yamada^Tarou^^^^^L^A~山田^太郎^^^^^L^I~やまだ^たろう^^^^^L^P||19700101|M
        PV1|1|O
        ORC|NW|PL-JP1^HIS|FL-JP1^RIS||SC||^^^20261202093000+0900
        {obr}
        """)

    [ack] = _send(shipped, message)

    assert ack.code == "AA", ack.raw
    assert _patient(shipped, "JP-1")[0] == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    [found] = findscu(shipped.dicom, tmp_path, "PatientName=Yamada^Tarou", "AccessionNumber=")
    assert found.AccessionNumber == "ACC-JP1"
    assert found.SpecificCharacterSet == "ISO_IR 192"
    assert str(found.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert (found.PatientName.ideographic, found.PatientName.phonetic) == ("山田^太郎", "やまだ^たろう")


@pytest.mark.parametrize(("n", "prior_patient"), [
    (1, "PID|1||OMG-1^^^WESTSIDE^MR||Prior^Paula||19700101|F"),
    (2, "PV1|1|O\nAL1||DA^Drug allergy^HL70127|Penicillin"),
])  # fmt: skip
def test_an_omg_with_a_prior_result_schedules_its_order_and_leaves_the_earlier_one_alone(
        shipped: Engine, tmp_path: Path, n: int, prior_patient: str) -> None:
    """OMG^O19 may carry a PRIOR_RESULT: a PID, then an earlier order's ORC/OBR and its OBX. Its ORC was
    mapped as an order: ORC-1 RE with ORC-5 CM was AE 103 for the whole message (the new order lost), and
    a prior NW would have put the old exam back on the worklist. The PRIOR_RESULT's PID is optional
    (PATIENT_PRIOR): a sender may start it with its PV1 (and AL1), as an OMG^O19 of the HL7 FHIR converter's
    samples does (case 2)."""
    obr = "|".join(["OBR", "1", f"PL-OMG{n}^RIS", f"FL-OMG{n}^RIS", "CTHEAD^CT head^L", *[""] * 13,
                    f"ACC-OMG{n}", f"RP-OMG{n}", f"SPS-OMG{n}", "", "", "", "CT"])
    prior = "\n".join([prior_patient, f"ORC|RE|PL-OLD{n}^RIS|FL-OLD{n}^RIS||CM",
                        f"OBR|1|PL-OLD{n}^RIS|FL-OLD{n}^RIS|CTHEAD^CT head^L|||20250101",
                        "OBX|1|TX|CT^CT head||no acute findings||||||F"])
    message = _er7(f"""
        MSH|^~\\&|RIS|WESTSIDE|RADBRIDGE|RADIOLOGY|20261201090000||OMG^O19^OMG_O19|OMG000{n}|P|2.5.1
        PID|1||OMG-{n}^^^WESTSIDE^MR||Prior^Paula||19700101|F
        PV1|1|O
        ORC|NW|PL-OMG{n}^RIS|FL-OMG{n}^RIS||SC
        {obr}
        {prior}
        """)

    [ack] = _send(shipped, message)

    assert ack.code == "AA", ack.raw
    placed = f"SELECT placer_order_number FROM orders WHERE placer_order_number IN ('PL-OMG{n}', 'PL-OLD{n}')"
    assert _rows(shipped, placed) == [(f"PL-OMG{n}",)]
    [found] = findscu(shipped.dicom, tmp_path, f"AccessionNumber=ACC-OMG{n}", "PatientName=")
    assert str(found.PatientName) == "Prior^Paula"


def test_an_order_with_its_timing_only_in_obr_reaches_the_worklist_at_its_time_and_priority(
        shipped: Engine, tmp_path: Path) -> None:
    """OpenMRS's radiology module sends ``ORC|NW`` bare, the priority as a word in OBR-27.6 and the exam's
    time in OBR-36 (Scheduled Date/Time); Bahmni sends ``ROUTINE`` in ORC-7.6. The STAT order was ROUTINE
    on the worklist (OBR-27.6 was not read, and the word not in priority.csv) and scheduled at arrival."""
    obr = ["OBR", "", "", "HS-ACC-2042", "36554-4^Chest 1 view (XRay)", *[""] * 32]
    obr[24], obr[27], obr[31], obr[36] = "CR", "^^^^^STAT", "^Fall from ladder", "20240521143000"
    stat = _er7(f"""
        MSH|^~\\&|OpenMRS|HILLSIDE|RADBRIDGE|RADIOLOGY|20240520080000||ORM^O01|OMRS0002|P|2.3
        PID|||HS-2042||Amadi^Chidi||19800323|M
        ORC|NW
        {"|".join(obr)}
        """)
    routine = _er7(f"""
        MSH|^~\\&|BahmniEMR|BahmniEMR|||2024052011||ORM^O01|BAH0001|P|2.5
        PID|||HS-2043||^HS-2043||19991230000000+0000|M
        ORC|NW|ORD-2043|ORD-2043||||^^^^^ROUTINE
        {"|".join(["OBR", "1", "", "", "1234^Abdomen AP", *[""] * 19, "CR"])}
        """)

    assert [a.code for a in _send(shipped, stat, routine)] == ["AA", "AA"]

    keys = ("RequestedProcedurePriority=", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=")
    [found] = findscu(shipped.dicom, tmp_path, "PatientID=HS-2042", *keys)
    step = found.ScheduledProcedureStepSequence[0]
    assert found.RequestedProcedurePriority == "STAT"
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20240521", "143000")
    [found] = findscu(shipped.dicom, tmp_path, "PatientID=HS-2043", *keys)
    assert found.RequestedProcedurePriority == "ROUTINE"


def test_a_report_whose_interpreter_is_sent_as_an_xcn_keeps_the_radiologist_s_name(shipped: Engine) -> None:
    """A US radiology reporting feed (v2.4-2.7) sends OBR-32 as an XCN, ``id^family^given^middle^^^degree``,
    not as NDL subcomponents: the radiologist was stored as 'D1458838^Quill^Nora^T.' (the id as the family
    name) and went so to the EHR. The id stays interpreter_id."""
    [created] = _send(shipped, _nw("XCN1", "W-64001", "Report^Ivo", "XCN1"))
    assert created.code == "AA", created.raw
    obr = ["OBR", "1", "PL-XCN1^RIS", "FL-XCN1^RIS", "CTABD^CT abdomen^L", "", "", "20240520093000",
           *[""] * 17, "F", *[""] * 6, "D1458838^Quill^Nora^T.^^^M.D."]
    oru = _er7(f"""
        MSH|^~\\&|RPT|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520100000||ORU^R01|XCNR1|P|2.7
        PID|1||W-64001^^^WESTSIDE^MR||Report^Ivo||19700101|M
        ORC|RE|PL-XCN1^RIS|FL-XCN1^RIS||CM
        {"|".join(obr)}
        OBX|1|TX|GDT^Report||No acute findings.||||||F
        """)

    async def go() -> Ack:
        sender = Sender(int(shipped.env["RADBRIDGE_REPORTS_MLLP_PORT"]), timeout=30)
        try:
            return await sender.send(oru)
        finally:
            await sender.close()

    ack = asyncio.run(go())

    assert ack.code == "AA", ack.raw
    assert _rows(shipped, "SELECT interpreter FROM reports WHERE placer_order_number = 'PL-XCN1'") == [
        ("Quill^Nora^T.",)]


def test_a_patient_whose_day_of_birth_is_unknown_is_registered_and_scheduled(shipped: Engine, tmp_path: Path) -> None:
    """HL7 dates may stop at the year or month (DT ``YYYY[MM[DD]]``), and registration systems send a birth
    date so for people whose day of birth is not known. The A04 and every order for the patient were AE 102
    at PID-7 ('has no day; DICOM DA needs YYYYMMDD'): the patient could never reach the worklist. Now the
    patient is kept without a birth date (DICOM cannot hold a partial one), and the message's note says so
    without the value; a stored full birth date is not blanked by a later partial one."""
    register = _er7("""
        MSH|^~\\&|PAS|EASTSIDE|RADBRIDGE|RADIOLOGY|20240520070000||ADT^A04^ADT_A01|DOBY1|P|2.5
        EVN|A04|20240520070000
        PID|1||E-60022^^^WESTSIDE^MR||Haidari^Farid||1983|M
        PV1|1|O
        """)
    order = _nw("DOBY2", "E-60022", "Haidari^Farid", "DOBY2").replace(b"|19700101|", b"|198305|")

    assert [a.code for a in _send(shipped, register, order)] == ["AA", "AA"]

    assert _rows(shipped, "SELECT patient_name, birth_date FROM patients WHERE patient_id = 'E-60022'") == [
        ("Haidari^Farid", "")]
    note = _shown(shipped, "DOBY1")["note"]
    assert note == ("patient E-60022: the birth date is a year without a day; DICOM needs YYYYMMDD, "
                    "so none was taken from this message")
    assert "year and month" in _shown(shipped, "DOBY2")["note"]
    [found] = findscu(shipped.dicom, tmp_path, "AccessionNumber=ACC-DOBY2", "PatientName=", "PatientBirthDate=")
    assert (str(found.PatientName), found.PatientBirthDate) == ("Haidari^Farid", "")

    [update] = _send(shipped, _a04("DOBY3", "W-60023", "Haidari^Lina"))
    assert update.code == "AA"
    [partial] = _send(shipped, _a04("DOBY4", "W-60023", "Haidari^Lina").replace(b"|19590611|", b"|1959|"))
    assert partial.code == "AA", partial.raw
    assert _rows(shipped, "SELECT birth_date FROM patients WHERE patient_id = 'W-60023'") == [("19590611",)]


@pytest.mark.parametrize("event", ["A40", "A18"])
def test_a_merge_whose_mrg_1_names_no_authority_merges_the_registered_patient(shipped: Engine, event: str) -> None:
    """Older PAS feeds write MRG-1 as the bare number (``MRG|W-4409``) while PID-3 carries the authority.
    The prior was looked up as (W-4409, no issuer): a new patient was created and marked MERGED, AA, while the
    registered W-4409^WESTSIDE stayed ACTIVE with its orders. MRG-1 without authority is now the survivor's."""
    survivor, prior = f"W-{event}-71", f"W-{event}-72"
    _send(shipped, _a04(f"BARE{event}1", survivor, "Dahl^Ingrid"), _a04(f"BARE{event}2", prior, "Dahl^Ingrid"))
    merge = _er7(f"""
        MSH|^~\\&|PAS|WESTSIDE|RADBRIDGE|RADIOLOGY|20240520071500||ADT^{event}|BARE{event}3|P|2.3
        EVN|{event}|20240520071500
        PID|1||{survivor}^^^WESTSIDE^MR||Dahl^Ingrid||19590611|F
        MRG|{prior}
        """)

    [ack] = _send(shipped, merge)

    assert ack.code == "AA", ack.raw
    assert _rows(shipped, "SELECT issuer, status FROM patients WHERE patient_id = ?", prior) == [("WESTSIDE", "MERGED")]
