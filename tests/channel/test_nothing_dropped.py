"""Issue #11 through the channel, with the shipped mappings and handlers, on SQLite and PostgreSQL:
what the RIS is answered, what is stored, and what ``messages show`` and ``status`` say."""

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from engine.channel.persist import Persister
from engine.channel.prepare import Preparer
from engine.channel.runner import ChannelRunner
from engine.cli.queries import channel_status, message_detail
from engine.config.models import ChannelConfig, EngineConfig
from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
from engine.domain.tables import orders, procedure_steps, step_station_aes
from engine.hl7.er7 import Message
from engine.mapping import load_mappings
from engine.store.schema import messages
from tests.conftest import ROOT

GOLDEN = ROOT / "mappings" / "tests" / "order-to-worklist"
MSH = "MSH|^~\\&|RIS|NORTHSIDE|RADBRIDGE|NORTHSIDE|20240312101500||{type}|{cid}|P|2.3.1\r"
PID = "PID|1||MRN6210^^^NORTHSIDE^MR||Haddad^Rami\r"


def _runner(db: Any) -> ChannelRunner:
    engine = EngineConfig(mappings_dir=ROOT / "mappings", timezone="UTC")
    cfg = ChannelConfig.model_validate({
        "name": "ris", "source": {"type": "mllp", "port": 0}, "mapping": ["adt-to-patient", "order-to-worklist"],
        "handlers": ["patients", "orders"], "accept": {"message_types": ["ADT^*", "ORM^O01", "ORU^R01", "OMI^O23"]}})
    compiled = load_mappings(ROOT / "mappings", timezone="UTC")
    chain = [compiled["adt-to-patient"], compiled["order-to-worklist"]]

    def mapping(message: Message) -> list[dict[str, Any]]:
        return next((list(m.apply(message, provenance=False).records) for m in chain if m.accepts(message)), [])

    handlers = [PatientsHandler(patient_policy(engine)), OrdersHandler(order_policy(engine), upsert_patients=False)]
    return ChannelRunner(cfg, Preparer(cfg, mapping), Persister(cfg, handlers, "RB", "RAD"), db)  # type: ignore[list-item]


def _send(runner: ChannelRunner, text: str) -> Message:
    return Message(asyncio.run(runner.receive(text.encode(), "test")).decode("latin-1"))


def _last(db: Any, control_id: str | None = None) -> dict[str, Any]:
    query = select(messages.c.id).order_by(messages.c.id.desc())
    if control_id is not None:
        query = query.where(messages.c.control_id == control_id)
    last = db.read(lambda c: c.execute(query).scalar())
    detail = db.read(lambda c: message_detail(c, last))
    assert detail is not None
    return detail


def _steps(db: Any) -> list[str]:
    return db.read(lambda c: list(c.execute(select(procedure_steps.c.status).order_by(procedure_steps.c.id))
                                  .scalars()))


def test_mr_brain_with_a_loinc_code_is_ae_103_at_obr_2_4_and_nothing_is_stored(db) -> None:
    text = (GOLDEN / "orm_o01_loinc_mr_and_lab.hl7").read_text()
    ack = _send(_runner(db), text)
    err = ack.segment("ERR")
    assert ack.segment("MSA").value(1) == "AE" and err is not None
    assert (err.value(2, 1, 1), err.value(2, 1, 2), err.value(2, 1, 3), err.value(3)) == ("OBR", "2", "4", "103")
    detail = _last(db)
    assert detail["status"] == "ERROR"
    assert "'24590-2' (LN)" in detail["error"] and "procedure_codes.csv" in detail["error"]
    assert _steps(db) == []


def test_an_ignored_lab_order_is_unchanged_said_and_counted(db) -> None:
    runner = _runner(db)
    lab = (MSH.format(type="ORM^O01", cid="LAB1") + PID + "ORC|NW|PLC-9|FIL-9||SC\r"
           "OBR|1|PLC-9|FIL-9|2345-7^Glucose^LN" + "|" * 20 + "LAB\r")
    assert _send(runner, lab).segment("MSA").value(1) == "AA"
    detail = _last(db)
    assert detail["status"] == "UNCHANGED"
    assert detail["note"] == ("order placer PLC-9, filler FIL-9: not an imaging order "
                              "(OBR-24 'LAB' in non_imaging.csv), ignored (orders.non_imaging: ignore)")
    assert db.read(channel_status)["ris"]["unchanged"] == 1
    assert _send(runner, lab).segment("MSA").value(1) == "AA"  # resent: the original answer, one row
    counts = db.read(channel_status)["ris"]
    assert (counts["received"], counts["unchanged"], counts["errors"]) == (1, 1, 0)


def test_a_minimal_cancel_finds_the_order_and_a_second_one_says_it_changed_nothing(db) -> None:
    runner = _runner(db)
    nw = (GOLDEN.parent / "order-to-worklist" / "orm_o01_two_orders.hl7").read_text()
    assert _send(runner, nw).segment("MSA").value(1) == "AA"
    cancel = MSH.format(type="ORM^O01", cid="CA1") + PID + "ORC|CA|PLC-6001|FIL-6001\rOBR|1|PLC-6001|FIL-6001\r"
    assert _send(runner, cancel).segment("MSA").value(1) == "AA"
    assert _steps(db) == ["CANCELED", "SCHEDULED"] and _last(db)["status"] == "PROCESSED"
    again = cancel.replace("|CA1|", "|CA2|")
    assert _send(runner, again).segment("MSA").value(1) == "AA"
    detail = _last(db)
    assert (detail["status"], detail["note"]) == (
        "UNCHANGED", "order placer PLC-6001, filler FIL-6001: CA changed nothing (the step is already CANCELED)")


def test_adt_without_pid_and_unimplemented_events_are_refused(db) -> None:
    runner = _runner(db)
    no_pid = _send(runner, MSH.format(type="ADT^A08", cid="A1") + "EVN|A08\rPV1|1|O\r")
    assert (no_pid.segment("MSA").value(1), no_pid.segment("ERR").value(3)) == ("AE", "101")
    a09 = _send(runner, MSH.format(type="ADT^A09", cid="A2") + "EVN|A09\r" + PID)
    assert (a09.segment("MSA").value(1), a09.segment("ERR").value(3)) == ("AR", "201")
    oru = _send(runner, MSH.format(type="ORU^R01", cid="R1") + PID + "OBR|1\r")
    assert (oru.segment("MSA").value(1), oru.segment("ERR").value(3)) == ("AR", "200")
    assert db.read(channel_status)["ris"]["errors"] == 3
    statuses = db.read(lambda c: list(c.execute(select(messages.c.status).order_by(messages.c.id)).scalars()))
    assert statuses == ["ERROR", "REJECTED", "REJECTED"]


def test_pharmacy_and_diet_orders_are_acknowledged_unchanged_with_one_note_each(db) -> None:
    text = (GOLDEN / "orm_o01_pharmacy_and_diet.hl7").read_text()
    assert _send(_runner(db), text).segment("MSA").value(1) == "AA"
    detail = _last(db)
    assert detail["status"] == "UNCHANGED" and _steps(db) == []
    assert [line.split(": ", 1)[1] for line in detail["note"].splitlines()] == [
        "not an imaging order (segment RXO in non_imaging.csv), ignored (orders.non_imaging: ignore)",
        "not an imaging order (segment ODS in non_imaging.csv), ignored (orders.non_imaging: ignore)",
    ]


def test_an_unchanged_message_is_logged_without_its_data(db, caplog) -> None:
    lab = (MSH.format(type="ORM^O01", cid="LAB2") + PID + "ORC|NW|PLC-10|FIL-10||SC\r"
           "OBR|1|PLC-10|FIL-10|2345-7^Glucose^LN" + "|" * 20 + "LAB\r")
    with caplog.at_level("INFO", logger="engine.channel.persist"):
        assert _send(_runner(db), lab).segment("MSA").value(1) == "AA"
    (line,) = [r.getMessage() for r in caplog.records if "changed nothing" in r.getMessage()]
    message_id = _last(db)["id"]
    assert line == (f"message {message_id} changed nothing: 1 record(s) left alone, "
                    f"see `radbridge messages show {message_id}`")


def test_a_filtered_message_says_so(db) -> None:
    cfg = ChannelConfig.model_validate({"name": "f", "source": {"type": "mllp", "port": 0},
                                        "filter": {"message_types": ["ADT^*"]}})
    runner = ChannelRunner(cfg, Preparer(cfg), Persister(cfg, [], "RB", "RAD"), db)
    assert _send(runner, MSH.format(type="ORM^O01", cid="F1") + PID).segment("MSA").value(1) == "AA"
    detail = _last(db)
    assert (detail["status"], detail["note"]) == ("FILTERED", "ORM^O01 did not pass the channel's filter")


V22_ADT = ("MSH|^~\\&|PAS|NORTHSIDE|RADBRIDGE|NORTHSIDE|199801011200||ADT|{cid}|P|2.2\r"
           "EVN|{event}|199801011200\rPID|1||MRN2201^^^NORTHSIDE^MR||{name}||19600101|M\r")


def test_a_v22_adt_with_its_event_only_in_evn_1_is_applied_and_noted(db) -> None:
    """Before v2.3 MSH-9 was the code alone and EVN-1 the event; older PAS feeds still send that."""
    from engine.domain.tables import patients

    runner = _runner(db)
    assert _send(runner, V22_ADT.format(cid="V1", event="A04", name="Okafor^Ada")).segment("MSA").value(1) == "AA"
    ack = _send(runner, V22_ADT.format(cid="V2", event="A08", name="Okafor^Adaeze"))
    assert ack.segment("MSA").value(1) == "AA"
    names = db.read(lambda c: c.execute(select(patients.c.patient_name).where(patients.c.patient_id == "MRN2201"))
                    .scalars().all())
    assert names == ["Okafor^Adaeze"]
    detail = _last(db)
    assert "MSH-9.2 empty: trigger event 'A08' read from EVN-1" in detail["note"]
    stored = db.read(lambda c: c.execute(select(messages.c.message_type, messages.c.text)
                                         .order_by(messages.c.id.desc())).first())
    assert stored.message_type == "ADT^A08" and "|ADT|V2|" in stored.text  # the text as received


def test_an_adt_with_no_event_anywhere_is_still_ar_201(db) -> None:
    text = V22_ADT.format(cid="V3", event="", name="Okafor^Ada")
    ack = _send(_runner(db), text)
    assert ack.segment("MSA").value(1) == "AR" and ack.segment("ERR").value(3) == "201"


def test_an_xo_with_orc5_empty_changes_the_content_and_keeps_the_steps_status(db) -> None:
    """XO alone is a change of the order's content: a started exam stays started (AE 103 before)."""
    from engine.domain.tables import orders

    runner = _runner(db)
    nw = (GOLDEN.parent / "order-to-worklist" / "orm_o01_two_orders.hl7").read_text()
    assert _send(runner, nw).segment("MSA").value(1) == "AA"
    started = MSH.format(type="ORM^O01", cid="SC1") + PID + "ORC|SC|PLC-6001|FIL-6001||IP\rOBR|1|PLC-6001|FIL-6001\r"
    assert _send(runner, started).segment("MSA").value(1) == "AA"
    assert _steps(db)[0] == "STARTED"
    xo = (MSH.format(type="ORM^O01", cid="XO1") + "PID|1||MRN5120^^^NORTHSIDE^MR||Okafor^Chidi\r"
          "ORC|XO|PLC-6001|FIL-6001\rOBR|1|PLC-6001|FIL-6001|CXR2^Chest two views, portable^L\r")
    ack = _send(runner, xo)
    assert ack.segment("MSA").value(1) == "AA", ack.text
    assert _steps(db)[0] == "STARTED" and _last(db)["status"] == "PROCESSED"
    described = db.read(lambda c: c.execute(select(orders.c.requested_procedure_description)
                                            .where(orders.c.placer_order_number == "PLC-6001")).scalar_one())
    assert described == "Chest two views, portable"


def test_messages_show_prints_the_bytes_of_a_frame_it_could_not_read(db) -> None:
    """A frame cut off by a closed connection is kept REJECTED with no decoded text: the text view
    shows the bytes as received (``--json`` has them as ``raw``), so the operator can see what was lost."""
    from engine.cli.main import _detail_text

    cut_off = (MSH.format(type="ADT^A08", cid="CUT1") + "EVN|A08\r" + PID).encode()
    asyncio.run(_runner(db).keep(cut_off, "test", "connection closed inside an MLLP frame"))
    detail = _last(db)
    assert (detail["status"], detail["text"]) == ("REJECTED", "")
    shown = _detail_text(detail)
    assert "message (bytes as received, not read as HL7):\nMSH|^~\\&|RIS|NORTHSIDE" in shown
    assert "|ADT^A08|CUT1|" in shown and "PID|1||MRN6210" in shown


def _order(cid: str, accession: str = "ACC-L1", description: str = "CT head", placer: str = "PLC-L1") -> str:
    return (MSH.format(type="ORM^O01", cid=cid) + PID + f"ORC|NW|{placer}|FIL-L1||SC\r"
            f"OBR|1|{placer}|FIL-L1|CTHEAD^{description}^L" + "|" * 14 + f"{accession}|||||CT\r")


def test_an_identifier_too_long_for_dicom_is_ae_102_at_its_field_on_every_database(db) -> None:
    """An 18-character accession number (DICOM SH holds 16) was AA on SQLite, stored whole, and
    AE 207 "application internal error: StringDataRightTruncation" without a location on PostgreSQL."""
    runner = _runner(db)
    for cid, text, where in (("LONG1", _order("LONG1", accession="ACC-2026-000012345"), ("OBR", "1", "18")),
                             ("LONG2", _order("LONG2", placer="P" * 65), ("ORC", "1", "2")),
                             ("LONG3", (MSH.format(type="ADT^A08", cid="LONG3") + "EVN|A08\r"
                                        "PID|1||" + "9" * 65 + "^^^NORTHSIDE^MR||Haddad^Rami\r"), ("PID", "1", "3"))):
        ack = _send(runner, text)
        err = ack.segment("ERR")
        assert ack.segment("MSA").value(1) == "AE" and err is not None, cid
        assert (err.value(2, 1, 1), err.value(2, 1, 2), err.value(2, 1, 3), err.value(3)) == (*where, "102"), cid
        assert _last(db)["status"] == "ERROR"
    assert "accession_number (OBR-18) is 18 characters; a DICOM SH holds at most 16" in _last(db, "LONG1")["error"]
    assert _steps(db) == []


def test_a_procedure_description_longer_than_64_characters_is_cut_on_every_database(db) -> None:
    """It was AE 207 (StringDataRightTruncation) on PostgreSQL: real OBR-4.2 texts run past 64."""
    description = "CT HEAD WITHOUT CONTRAST WITH 3D RECONSTRUCTIONS AND VOLUME RENDERING, ANGIO"
    assert _send(_runner(db), _order("DESC1", description=description)).segment("MSA").value(1) == "AA"
    stored = db.read(lambda c: c.execute(select(orders.c.requested_procedure_description,
                                                orders.c.procedure_code_meaning)).one())
    assert tuple(stored) == (description[:64], description[:64])


def test_a_note_on_a_change_is_not_logged_as_a_record_left_alone(db, caplog) -> None:
    """An order that attaches a waiting report changed everything it carries; its note says so. It was
    logged "was partly applied: 1 record(s) left alone"."""
    from engine.handlers import Outcome

    attached = [Outcome(True), Outcome(True, "report 2 for order placer PL1 was waiting: attached and sent on")]
    mixed = [Outcome(True), Outcome(False, "order placer PL2: not an imaging order")]
    with caplog.at_level("INFO", logger="engine.channel.persist"):
        for message_id, outcomes in ((7, attached), (8, mixed)):
            db.writer.call(lambda c, i=message_id, o=outcomes: Persister._note(c, i, o, []))
    assert [r.getMessage() for r in caplog.records] == [
        "message 7 was applied with 1 note(s), see `radbridge messages show 7`",
        "message 8 was partly applied: 1 record(s) left alone, see `radbridge messages show 8`"]


def test_the_dcm4che_omi_with_a_19_character_sps_id_is_aa_and_kept_whole_on_every_database(db, corpus) -> None:
    """Its IPC-4 "ScheduledProcStepID" (19), IPC-7, IPC-8 and IPC-9 overrun DICOM's SH/AE 16: AA on SQLite
    and stored whole, AE 207 "StringDataRightTruncation" without a location on PostgreSQL. Now AA on both,
    whole (MPPS and images name the step by them), and the note says which ones overran."""
    raw = (corpus / "hl7" / "edge" / "dcm4che_OMI_O23-ImagingOrder.hl7").read_bytes()
    ack = Message(asyncio.run(_runner(db).receive(raw, "test")).decode("latin-1"))
    assert ack.segment("MSA").value(1) == "AA" and ack.segment("ERR") is None
    step = db.read(lambda c: c.execute(select(
        procedure_steps.c.sps_id, procedure_steps.c.scheduled_station_name, procedure_steps.c.location,
        procedure_steps.c.scheduled_station_ae_title, orders.c.requested_procedure_id,
    ).join(orders, orders.c.id == procedure_steps.c.order_pk)).one())
    assert tuple(step) == ("ScheduledProcStepID", "ScheduledStationName", "ScheduledProcStepLocation",
                           "ScheduledStationAET1\\ScheduledStationAET2", "RequestedProcID")
    stations = db.read(lambda c: sorted(c.execute(select(step_station_aes.c.ae_title)).scalars()))
    assert stations == ["ScheduledStationAET1", "ScheduledStationAET2"]
    detail = _last(db)
    assert detail["status"] == "PROCESSED"
    notes = detail["note"].splitlines()
    assert ("order placer PlacerOrderNumberImagingServiceRequest, filler FillerOrderNumberImagingServiceRequest: "
            "Scheduled Procedure Step ID (IPC-4/OBR-20) is 19 characters, longer than a DICOM SH (16): kept whole"
            ) in notes
    assert sum("Scheduled Station Name (IPC-7) is 20 characters" in n for n in notes) == 1
    assert sum("Scheduled Procedure Step Location (IPC-8) is 25 characters" in n for n in notes) == 1
    assert sum("Scheduled Station AE Title (IPC-9) is 20 characters" in n and "no modality can ask" in n
               for n in notes) == 2
    assert not any("Requested Procedure ID" in n for n in notes)  # 15 characters: fits


def _omi(cid: str, ipc: str) -> str:
    return (MSH.format(type="OMI^O23", cid=cid) + PID + "ORC|NW|PLC-O1|FIL-O1||SC\r"
            "OBR|1|PLC-O1|FIL-O1|CTHEAD^CT head^L\r" + ipc + "\r")


def test_values_longer_than_their_columns_are_ae_102_at_their_field_on_every_database(db) -> None:
    """The same class of bug elsewhere on the order and patient paths (AA on SQLite, AE 207 on PostgreSQL):
    a step identifier over 64, a modality over 16 (CS), a code value over 64, a name over 324 (PN)."""
    runner = _runner(db)
    obr = "OBR|1|PLC-L9|FIL-L9|{code}^CT head^L" + "|" * 12 + "{name}" + "|" * 2 + "ACC-L9|{rp}|||||CT\r"
    order = MSH.format(type="ORM^O01", cid="{cid}") + PID + "ORC|NW|PLC-L9|FIL-L9||SC\r" + obr
    cases = (
        (order.format(cid="L1", code="CTHEAD", name="", rp="R" * 65), ("OBR", "1", "19"),
         "requested_procedure_id (OBR-19) is 65 characters; radbridge keeps at most 64 (a DICOM SH holds 16)"),
        (_omi("L2", "IPC|ACC-O1|RP-O1|1.2.3.4|SPS-" + "9" * 61 + "|CT"), ("IPC", "1", "4"),
         "scheduled_procedure_step_id (IPC-4) is 65 characters"),
        (_omi("L3", "IPC|ACC-O1|RP-O1|1.2.3.4|SPS-O1|COMPUTED TOMOGRAPHY"), ("IPC", "1", "5"),
         "modality (IPC-5) is 19 characters; a DICOM CS holds at most 16"),
        (_omi("L4", "IPC|ACC-O1|RP-O1|1.2.3.4|SPS-O1|CT||||" + "S" * 65), ("IPC", "1", "9"),
         "scheduled_station_ae_title (IPC-9) has a value of 65 characters"),
        (order.format(cid="L5", code="C" * 65, name="", rp="RP-L9"), ("OBR", "1", "4"),
         "requested_procedure_code.code_value (OBR-4) is 65 characters; a DICOM LO holds at most 64"),
        (order.format(cid="L6", code="CTHEAD", name="1^" + "Long" * 82, rp="RP-L9"), ("OBR", "1", "16"),
         "requesting_physician (OBR-16) is 328 characters; radbridge keeps at most 324"),
        (MSH.format(type="ADT^A08", cid="L7") + "EVN|A08\rPID|1||MRN6210^^^NORTHSIDE^MR||" + "Haddad" * 55
         + "^Rami\r", ("PID", "1", "5"), "patient_name (PID-5) is 335 characters"),
    )
    for text, where, why in cases:
        ack = _send(runner, text)
        err = ack.segment("ERR")
        assert ack.segment("MSA").value(1) == "AE" and err is not None, why
        assert (err.value(2, 1, 1), err.value(2, 1, 2), err.value(2, 1, 3), err.value(3)) == (*where, "102"), why
        detail = _last(db)
        assert detail["status"] == "ERROR" and why in detail["error"], detail["error"]
    assert _steps(db) == []


def test_a_step_identifier_of_64_characters_is_kept_whole_and_matched_again_by_a_cancel(db) -> None:
    """64 fits the widened columns on PostgreSQL (migration 0021): the cancel names the step by them."""
    runner = _runner(db)
    ipc = "IPC|ACC-O1|" + "R" * 64 + "|1.2.3.4|" + "S" * 64 + "|CT||" + "N" * 64 + "|" + "L" * 64 + "|" + "A" * 64
    assert _send(runner, _omi("K1", ipc)).segment("MSA").value(1) == "AA"
    assert _steps(db) == ["SCHEDULED"] and len(_last(db)["note"].splitlines()) == 5
    cancel = _omi("K2", ipc).replace("ORC|NW|", "ORC|CA|").replace("||SC\r", "||CA\r")
    assert _send(runner, cancel).segment("MSA").value(1) == "AA"
    assert _steps(db) == ["CANCELED"]


def test_the_ack_of_a_missing_required_value_is_plain_ascii_without_msh_18(db) -> None:
    """Without MSH-18 the ACK goes out in 8859/1, where the rule description's '→' became '?'
    ("PID-3.1 ? required"): the engine's own texts are ASCII."""
    text = MSH.format(type="ORM^O01", cid="ASCII1") + "PID|1||^^^NORTHSIDE^MR||Haddad^Rami\rORC|NW|PLC-A1\r"
    raw = asyncio.run(_runner(db).receive(text.encode(), "test"))
    assert raw.isascii(), raw
    err = Message(raw.decode("ascii")).segment("ERR")
    assert err is not None and err.value(3) == "101"
    assert err.value(8).startswith("patient_id is required (first of PID-3.1 \\F\\ PID-2.1 -> required")


def test_dicom_delimiters_inside_hl7_values_reach_a_coerced_image_header_as_one_value(db) -> None:
    """Image coercion reads the stored order: a name or description with an escaped backslash or
    component separator must be one DICOM value there too, on every database."""
    from pydicom.dataset import Dataset

    from engine.domain.reconcile import OrderMatch, order_input
    from engine.reconcile.coerce import Modification, coerce

    text = (MSH.format(type="ORM^O01", cid="DLM1") + "PID|1||MRN6210^^^NORTHSIDE^MR||Smith\\E\\Jones^Ann\\S\\Marie\r"
            "ORC|NW|PLC-D1|FIL-D1||SC\rOBR|1|PLC-D1|FIL-D1|CTHEAD^CT HEAD\\E\\NECK^L" + "|" * 14 + "ACC-D1|||||CT\r")
    assert _send(_runner(db), text).segment("MSA").value(1) == "AA"
    row = db.read(lambda c: c.execute(select(orders.c.id, orders.c.patient_pk, procedure_steps.c.id.label("step"))
                                      .join(procedure_steps, procedure_steps.c.order_pk == orders.c.id)).one())
    record = db.read(lambda c: order_input(c, OrderMatch(row.id, row.step, row.patient_pk, "accession")))
    (values,) = load_mappings(ROOT / "mappings", timezone="UTC")["order-to-image"].apply_to(record).records
    header = Dataset()
    header.PatientName, header.PatientID, header.AccessionNumber = "SMITH^J", "MRN6210", "ACC-D1"
    coerce(header, values, Modification(datetime(2026, 12, 5, tzinfo=UTC), "RADBRIDGE", "CT1"))
    assert header["PatientName"].VM == 1 and str(header.PatientName) == "Smith Jones^Ann Marie"
    assert header["StudyDescription"].VM == 1 and header.StudyDescription == "CT HEAD/NECK"


def test_an_msh_18_naming_a_binary_codec_is_answered_not_dropped(db) -> None:
    runner = _runner(db)
    msh = MSH.format(type="ADT^A08", cid="H1").replace("|P|2.3.1\r", "|P|2.5|||||base64\r")
    ack = _send(runner, msh + "EVN|A08\rPID|1||MRN6210^^^NORTHSIDE^MR||Ma\\XB3\\gorzata^Rami\r")
    assert ack.segment("MSA").value(1) == "AA" and ack.segment("MSA").value(2) == "H1"
