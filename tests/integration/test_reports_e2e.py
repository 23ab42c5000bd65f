"""Reports end to end with real peers: python-hl7's MLLP client sends ORM^O01 and ORU^R01 to a running
engine, and a real MLLP receiver (tests/integration/mllp_peer.py) plays the EHR.

One engine for the module (its start is the slow part); every test uses its own
order numbers. What is checked is what an interface team checks: the ACK
(MSA-1, ERR-2), the ORU^R01 the EHR receives (ORC-1 RE, ORC-2 exactly as the
EHR sent it, OBR-25 = OBX-11, one OBX per line, MSH-12/MSH-18 and the bytes'
encoding), the versions kept, and what ``messages show`` / ``status`` say.
"""

from __future__ import annotations

import itertools
import json
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, EngineProcess, free_port, wait_for_port
from tests.integration.conftest import Ack, cli_json, send_all, sqlite_rows, write_channel
from tests.integration.mllp_peer import MLLPPeer, Received

pytestmark = pytest.mark.timeout(120)
_numbers = itertools.count(1)


class Site:
    """The running engine, its two MLLP ports and the EHR peer."""

    def __init__(self, engine: EngineProcess, orders_port: int, reports_port: int, ehr: MLLPPeer) -> None:
        self.engine, self.orders_port, self.reports_port, self.ehr = engine, orders_port, reports_port, ehr

    def order(self, placer: str, accession: str, patient: str = "MRN1") -> Ack:
        return send_all(self.orders_port, [orm(placer, accession, patient)])[0]

    def report(self, payload: bytes) -> Ack:
        return send_all(self.reports_port, [payload])[0]

    def ehr_messages(self, placer: str) -> list[Received]:
        return [m for m in self.ehr.messages() if f"|{placer}^" in m.payload.decode("utf-8", "replace")]

    def wait_ehr(self, placer: str, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.ehr_messages(placer)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.ehr_messages(placer))} of {count} ORU^R01 for {placer} reached the EHR")

    def shown(self, control_id: str) -> dict[str, Any]:
        listed = cli_json(self.engine, "messages", "list", "--control-id", control_id)
        assert len(listed) == 1, listed
        return dict(cli_json(self.engine, "messages", "show", str(listed[0]["id"])))

    def versions(self, placer: str) -> list[tuple[int, str, str]]:
        return [tuple(r) for r in sqlite_rows(
            self.engine.data_dir / "radbridge.db",
            "SELECT v.version, v.result_status, v.text FROM report_versions v JOIN reports r ON r.id = v.report_pk"
            " WHERE r.placer_order_number = ? ORDER BY v.version", placer)]  # fmt: skip


def orm(placer: str, accession: str, patient: str = "MRN1") -> bytes:
    """An ORM^O01 NW from the EHR/RIS; ORC-2 carries a universal id the ORU^R01 must echo."""
    return "\r".join([
        f"MSH|^~\\&|EHR|HOSP|RADBRIDGE|RAD|20261205080000||ORM^O01|O{placer}|P|2.5.1",
        f"PID|1||{patient}^^^HOSP^MR||Lindqvist^Maja||19800101|F",
        f"ORC|NW|{placer}^EHR^1.2.840.99.7^ISO|F{placer}^RIS||SC",
        f"OBR|1|{placer}^EHR^1.2.840.99.7^ISO|F{placer}^RIS|CTHEAD^CT head^L" + "|" * 14 + f"{accession}" + "|" * 6
        + "CT",
        "",
    ]).encode()


def oru(control_id: str, placer: str, status: str, lines: list[str], obx_type: str = "TX",
        patient: str = "MRN1", extra_obr: str = "", obx_status: str | None = None) -> bytes:
    """An ORU^R01 from the reporting system, one OBX per line (UTF-8); OBX-11 is OBR-25's first letter unless
    ``obx_status`` says otherwise."""
    obr = f"OBR|1|{placer}^EHR|F{placer}^RIS|CTHEAD^CT head^L|||20261205093000" + "|" * 15 + \
        f"20261205100000|||{status}|||||||RR1&Radiologist&Rita{extra_obr}"
    obx_status = status[:1] if obx_status is None else obx_status
    obx = [f"OBX|{n}|{obx_type}|GDT^Findings||{line}||||||{obx_status}" for n, line in enumerate(lines, 1)]
    return "\r".join([
        f"MSH|^~\\&|REPORTING|RAD|RADBRIDGE|RAD|20261205100100||ORU^R01|{control_id}|P|2.5.1|||||UNICODE UTF-8",
        f"PID|1||{patient}^^^HOSP^MR||Lindqvist^Maja", obr, *obx, "",
    ]).encode("utf-8")


def segments(received: Received) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for line in received.payload.decode("utf-8").split("\r"):
        if line:
            fields = line.split("|")
            out.setdefault(fields[0], []).append(fields)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    import os

    tmp = tmp_path_factory.mktemp("reports")
    config, data = tmp / "config", tmp / "var"
    (config / "channels").mkdir(parents=True)
    data.mkdir()
    ehr = MLLPPeer(free_port())
    ehr.up()
    orders_port, reports_port = free_port(), free_port()
    (config / "engine.yaml").write_text(textwrap.dedent(f"""\
        data_dir: {data}
        dicom: {{enabled: false}}
        mappings_dir: {ROOT / 'mappings'}
        outbox: {{poll_interval_seconds: 0.2, lease_seconds: 14}}
        reports:
          receivers:
            - {{name: ehr, mllp: "127.0.0.1:{ehr.port}", timeout_seconds: 3, retry: {{initial_seconds: 0.2}}}}
        """))
    engine = EngineProcess(config, data, {**os.environ, "PYTHONPATH": str(ROOT), "RADBRIDGE_DATA_DIR": str(data)})
    write_channel(engine, "ris", f"""\
        name: ris-inbound
        source: {{type: mllp, port: {orders_port}}}
        accept: {{message_types: ["ADT^*", "ORM^O01", "OMI^O23"]}}
        mapping: [adt-to-patient, order-to-worklist]
        handlers: [patients, orders, reports]
        """)
    write_channel(engine, "reports", f"""\
        name: reports-inbound
        source: {{type: mllp, port: {reports_port}}}
        accept: {{message_types: ["ORU^R01"]}}
        mapping: [oru-to-report]
        handlers: [reports]
        """)
    engine.start(wait_port=reports_port)
    wait_for_port(orders_port, proc=engine.proc)  # a test that orders first must not find it closed
    try:
        yield Site(engine, orders_port, reports_port, ehr)
    finally:
        engine.stop()
        ehr.close()


def ids() -> tuple[str, str]:
    n = next(_numbers)
    return f"PL{n:04d}", f"ACC{n:04d}"


def test_orm_then_final_oru_reaches_the_ehr_as_oru_r01_with_the_reference_fields(site: Site) -> None:
    placer, accession = ids()
    assert site.order(placer, accession).code == "AA"
    ack = site.report(oru(f"R{placer}", placer, "Final", ["No acute haemorrhage.", "Caf\\XC3A9\\ \\T\\ grey|white."
                                                          .replace("|", "\\F\\"), "Impression: normal."]))
    assert ack.code == "AA"
    (received,) = site.wait_ehr(placer, 1)
    seg = segments(received)
    msh, orc, obr = seg["MSH"][0], seg["ORC"][0], seg["OBR"][0]
    assert msh[8] == "ORU^R01^ORU_R01" and msh[11] == "2.5.1" and msh[17] == "UNICODE UTF-8"
    assert orc[1] == "RE" and orc[2] == f"{placer}^EHR^1.2.840.99.7^ISO" and obr[2] == orc[2]
    assert obr[18] == accession and obr[24] == "RAD" and obr[25] == "F" and obr[32] == "RR1&Radiologist&Rita"
    assert [(o[1], o[2], o[5], o[11]) for o in seg["OBX"]] == [
        ("1", "TX", "No acute haemorrhage.", "F"), ("2", "TX", "Café \\T\\ grey\\F\\white.", "F"),
        ("3", "TX", "Impression: normal.", "F")]  # fmt: skip
    assert site.versions(placer) == [(1, "F", "No acute haemorrhage.\nCafé & grey|white.\nImpression: normal.")]


def test_a_correction_is_version_2_and_reaches_the_ehr_whole_as_c(site: Site) -> None:
    placer, accession = ids()
    site.order(placer, accession)
    assert site.report(oru(f"R{placer}a", placer, "F", ["Left frontal lesion."])).code == "AA"
    assert site.report(oru(f"R{placer}b", placer, "C", ["No lesion: artefact.", "Corrected."])).code == "AA"
    first, second = site.wait_ehr(placer, 2)
    assert segments(first)["OBR"][0][25] == "F" and segments(second)["OBR"][0][25] == "C"
    assert [o[5] for o in segments(second)["OBX"]] == ["No lesion: artefact.", "Corrected."]
    assert {o[11] for o in segments(second)["OBX"]} == {"C"}
    assert segments(first)["MSH"][0][9].endswith("V1") and segments(second)["MSH"][0][9].endswith("V2")
    assert [v[:2] for v in site.versions(placer)] == [(1, "F"), (2, "C")]


def test_prelim_then_final_then_cancel(site: Site) -> None:
    placer, accession = ids()
    site.order(placer, accession)
    # OBX-11 P on the wet read: W in OBX-11 is "posted as wrong" (HL7 table 0085), a line that is not the report
    for n, (status, lines, obx) in enumerate([("Wet Read", ["Wet read: no bleed."], "P"),
                                              ("Final", ["Final: no bleed."], "F"), ("X", [], "X")]):
        assert site.report(oru(f"R{placer}{n}", placer, status, lines, obx_status=obx)).code == "AA"
    sent = site.wait_ehr(placer, 3)
    assert [segments(m)["OBR"][0][25] for m in sent] == ["P", "F", "X"]
    assert "OBX" not in segments(sent[2]) and segments(sent[2])["ORC"][0][5] == "CA"


def test_a_report_for_an_unknown_order_is_kept_and_sent_when_the_order_arrives(site: Site) -> None:
    placer, accession = ids()
    assert site.report(oru(f"R{placer}", placer, "F", ["Early report."])).code == "AA"
    shown = site.shown(f"R{placer}")
    assert shown["status"] == "PROCESSED" and "kept and sent on when the order arrives" in shown["note"]
    assert cli_json(site.engine, "status")["reports"]["waiting_for_order"] >= 1
    time.sleep(0.5)
    assert site.ehr_messages(placer) == []
    assert site.order(placer, accession).code == "AA"
    (received,) = site.wait_ehr(placer, 1)
    assert segments(received)["ORC"][0][2] == f"{placer}^EHR^1.2.840.99.7^ISO"
    assert "was waiting: attached and sent on" in site.shown(f"O{placer}")["note"]


def test_a_report_whose_status_is_only_in_obx_11_takes_it_from_there(site: Site) -> None:
    """hl7fix5: OBR-25 empty, OBX-11 F on every line was AE 101 at OBR^1^25; the status is derived from OBX-11
    (HL7 table 0085), the EHR gets OBR-25 F, and ``messages show`` says it was derived. A later
    correction whose lines say C and F is a correction."""
    placer, accession = ids()
    site.order(placer, accession)
    assert site.report(oru(f"R{placer}", placer, "", ["No bleed.", "Normal."], obx_status="F")).code == "AA"
    assert site.report(oru(f"R{placer}c", placer, "", ["Small bleed.", "Normal."], obx_status="C")
                       .replace(b"Normal.||||||C", b"Normal.||||||F")).code == "AA"
    first, second = site.wait_ehr(placer, 2)
    assert segments(first)["OBR"][0][25] == "F" and segments(second)["OBR"][0][25] == "C"
    assert [v[:2] for v in site.versions(placer)] == [(1, "F"), (2, "C")]
    assert "OBR-25 empty: status F derived from OBX-11 (F)" in site.shown(f"R{placer}")["note"]
    assert "OBR-25 empty: status C derived from OBX-11 (C, F)" in site.shown(f"R{placer}c")["note"]


def test_a_report_that_only_points_to_its_document_is_kept_sent_on_and_never_fetched(site: Site) -> None:
    """hl7fix5: an ORU^R01 whose only content is an OBX RP (reference pointer: the report document's URL) was
    AE 101 (no text); the reference is the version's content, the EHR gets it as received, and the engine
    never connects to it (a listener at that address sees no connection)."""
    import socket

    placer, accession = ids()
    site.order(placer, accession)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/report?id={placer}\\T\\fmt=pdf"
        payload = oru(f"R{placer}", placer, "F", [f"{url}^RIS^application^pdf"], obx_type="RP")
        assert site.report(payload).code == "AA"
        (received,) = site.wait_ehr(placer, 1)
        time.sleep(0.5)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came
    (obx,) = segments(received)["OBX"]
    assert (obx[2], obx[5], obx[11]) == ("RP", f"{url}^RIS^application^pdf", "F")
    (kept,) = [json.loads(a) for (a,) in sqlite_rows(
        site.engine.data_dir / "radbridge.db", "SELECT v.attachments FROM report_versions v JOIN reports r ON "
        "r.id = v.report_pk WHERE r.placer_order_number = ?", placer)]
    assert kept == [{"value_type": "RP", "reference": url.replace("\\T\\", "&"), "application": "RIS",
                     "media_type": "application", "media_subtype": "pdf"}]


def test_obx_posted_as_wrong_or_deleted_is_not_sent_to_the_ehr_and_messages_show_says_so(site: Site) -> None:
    """hl7fix6: OBX-11 W (the earlier value was wrong) and D (delete the OBX), HL7 table 0085, were report text:
    stored and sent to the EHR as current content. They are left out; ``messages show`` names each OBX."""
    placer, accession = ids()
    site.order(placer, accession)
    payload = oru(f"R{placer}", placer, "C", ["No bleed.", "Left frontal bleed.", "Old line.", "Normal."])
    payload = payload.replace(b"Left frontal bleed.||||||C", b"Left frontal bleed.||||||W")
    assert site.report(payload.replace(b"Old line.||||||C", b"Old line.||||||D")).code == "AA"
    (received,) = site.wait_ehr(placer, 1)
    assert [(o[5], o[11]) for o in segments(received)["OBX"]] == [("No bleed.", "C"), ("Normal.", "C")]
    assert site.versions(placer) == [(1, "C", "No bleed.\nNormal.")]
    note = site.shown(f"R{placer}")["note"]
    assert "OBX^2 left out of the report: OBX-11 W (posted as wrong" in note
    assert "OBX^3 left out of the report: OBX-11 D (delete the OBX" in note


def test_an_oru_that_only_points_at_the_dicom_study_is_ae_naming_the_obx(site: Site) -> None:
    """hl7fix6: an OBX RP whose type is DICOM (RP-3/RP-4 Application^DICOM: the images, not the report) alone
    was stored as a FINAL report with no text and sent to the EHR; it is AE 101 at OBX^1^5, nothing kept."""
    placer, accession = ids()
    site.order(placer, accession)
    payload = oru(f"R{placer}", placer, "F", ["1.2.840.99.7.1^PACS^Application^DICOM"], obx_type="RP")
    ack = site.report(payload)
    assert (ack.code, ack.field("ERR", 2)) == ("AE", "OBX^1^5"), ack.raw
    assert "DICOM images" in site.shown(f"R{placer}")["error"]
    assert site.versions(placer) == [] and site.ehr_messages(placer) == []


def test_hex_escaped_line_breaks_reach_the_ehr_as_lines(site: Site) -> None:
    """hl7fix6: ``\\X0D\\`` / ``\\X0D0A\\`` in OBX-5 (a line break as some reporting systems write it) decoded to
    CR kept inside the stored text and the line sent to the EHR; each is a line break, one OBX per line."""
    placer, accession = ids()
    site.order(placer, accession)
    assert site.report(oru(f"R{placer}", placer, "F", ["One\\X0D\\two\\X0D0A\\three"], obx_type="FT")).code == "AA"
    (received,) = site.wait_ehr(placer, 1)
    assert [o[5] for o in segments(received)["OBX"]] == ["One", "two", "three"]
    assert site.versions(placer) == [(1, "F", "One\ntwo\nthree")]


def test_a_real_ihe_style_report_keeps_its_text_without_the_dicom_uids(site: Site, corpus) -> None:
    """hl7fix6: dcm4che's ORU^R01 (corpus, IHE RAD style, 8859/1) opens with ST OBX carrying the study, series and
    SR instance UIDs; they were the first three lines of the report text. Kept for its order (not known here)
    with its findings first; ``messages show`` names the OBX left out."""
    payload = (corpus / "hl7" / "valid" / "dcm4che_ORU_R01-SR.hl7").read_bytes()
    payload = payload.replace(b"PlacerOrderNumberImagingServiceRequest", b"PLSR1")
    assert site.report(payload).code == "AA"
    ((_, _, text),) = site.versions("PLSR1")
    assert text.startswith("The right kidney is slightly enlarged") and "1.2.392.200036" not in text
    note = site.shown("1001129")["note"]
    assert "OBX^1, OBX^2, OBX^3 left out of the report: a DICOM UID" in note


def test_a_resent_oru_gets_its_original_ack_and_changes_nothing(site: Site) -> None:
    placer, accession = ids()
    site.order(placer, accession)
    payload = oru(f"R{placer}", placer, "F", ["Text."])
    first, again = site.report(payload), site.report(payload)
    assert first.code == again.code == "AA" and first.raw == again.raw
    # the same report under a new control id: accepted, UNCHANGED, and said why
    assert site.report(oru(f"R{placer}x", placer, "F", ["Text."])).code == "AA"
    shown = site.shown(f"R{placer}x")
    assert shown["status"] == "UNCHANGED" and "identical to version 1" in shown["note"]
    site.wait_ehr(placer, 1)
    time.sleep(0.5)
    assert len(site.ehr_messages(placer)) == 1 and len(site.versions(placer)) == 1


@pytest.mark.parametrize(("payload", "code", "location"), [
    (lambda p: oru(f"B{p}1", p, "Maybe", ["x"]), "AE", "OBR^1^25"),  # status not in the site table
    (lambda p: oru(f"B{p}2", p, "F", ["x"]).replace(b"|F" + p.encode() + b"^RIS|CTHEAD", b"|F|CTHEAD")
     .split(b"\rOBR")[0] + b"\r", "AE", "OBR^1"),  # no OBR at all
    # no PID-3 and an order nobody knows: no patient to keep it for (one whose order is known takes its patient)
    (lambda p: oru(f"B{p}3", "X" + p, "F", ["x"]).replace(b"PID|1||MRN1^^^HOSP^MR", b"PID|1||"), "AE", "PID^1^3^1"),
    (lambda p: oru(f"B{p}4", p, "F", ["x"], obx_type="NM"), "AE", "OBR^1"),  # no text line
    (lambda p: oru(f"B{p}5", p, "F", ["x"]).replace(b"20261205093000", b"20261345"), "AE", "OBR^1^7^1"),
    (lambda p: oru(f"B{p}6", p, "", ["x"]), "AE", "OBR^1^25"),  # no status in OBR-25 nor in any OBX-11
    (lambda p: orm(p, "A").replace(b"EHR|HOSP", b"RIS|HOSP", 1), "AR", "MSH^1^9^1"),  # an order on the reports port
])
def test_bad_reports_get_an_error_ack_with_its_location_and_are_kept(site: Site, payload, code: str,
                                                                     location: str) -> None:
    placer, accession = ids()
    site.order(placer, accession)
    ack = site.report(payload(placer))
    assert ack.code == code, ack.raw
    assert ack.field("ERR", 2) == location
    assert site.versions(placer) == []


def test_versions_queued_while_the_ehr_is_down_arrive_in_order_when_it_is_back(site: Site) -> None:
    placer, accession = ids()
    site.order(placer, accession)
    site.ehr.down()
    try:
        assert site.report(oru(f"R{placer}a", placer, "F", ["First."])).code == "AA"
        assert site.report(oru(f"R{placer}b", placer, "C", ["Second."])).code == "AA"
        time.sleep(1.0)
    finally:
        site.ehr.up()
    sent = site.wait_ehr(placer, 2)
    first_seen = list(dict.fromkeys(m.control_id for m in sent))  # an unanswered send may arrive twice
    assert [c[-2:] for c in first_seen] == ["V1", "V2"]
    assert [segments(m)["OBR"][0][25] for m in sent][-1] == "C"


def test_status_says_where_oru_goes(site: Site) -> None:
    status = cli_json(site.engine, "status")
    assert status["reports"]["receivers"] == {"ehr": f"127.0.0.1:{site.ehr.port}"}


def test_kill_9_after_the_aa_loses_neither_the_report_nor_its_oru_to_the_ehr(
    engine_process: EngineProcess,
) -> None:
    """Durable before acknowledged: the version and its queued ORU^R01 survive a kill -9 (EHR down meanwhile)."""
    ehr = MLLPPeer(free_port())  # not listening yet: the ORU^R01 can only wait in the outbox
    orders_port, reports_port = free_port(), free_port()
    (engine_process.config_dir / "engine.yaml").write_text(textwrap.dedent(f"""\
        data_dir: {engine_process.data_dir}
        dicom: {{enabled: false}}
        mappings_dir: {ROOT / 'mappings'}
        outbox: {{poll_interval_seconds: 0.2, lease_seconds: 14}}
        reports:
          receivers:
            - {{name: ehr, mllp: "127.0.0.1:{ehr.port}", timeout_seconds: 3, retry: {{initial_seconds: 0.2,
                max_seconds: 0.5}}}}
        """))
    write_channel(engine_process, "ris", f"""\
        name: ris-inbound
        source: {{type: mllp, port: {orders_port}}}
        mapping: [adt-to-patient, order-to-worklist]
        handlers: [patients, orders, reports]
        """)
    write_channel(engine_process, "reports", f"""\
        name: reports-inbound
        source: {{type: mllp, port: {reports_port}}}
        mapping: [oru-to-report]
        handlers: [reports]
        """)
    try:
        engine_process.start(wait_port=reports_port)
        wait_for_port(orders_port, proc=engine_process.proc)  # the channels open one after the other
        assert send_all(orders_port, [orm("PLK1", "ACCK1")])[0].code == "AA"
        assert send_all(reports_port, [oru("RPLK1", "PLK1", "F", ["Survives."])])[0].code == "AA"
        engine_process.kill()
        ehr.up()
        engine_process.start(wait_port=reports_port)
        (received,) = [m for m in ehr.wait_for(1) if b"|PLK1^" in m.payload]
        assert segments(received)["OBX"][0][5] == "Survives."
        rows = sqlite_rows(engine_process.data_dir / "radbridge.db",
                           "SELECT version, result_status FROM report_versions")
        assert rows == [(1, "F")]
    finally:
        engine_process.stop()
        ehr.close()
