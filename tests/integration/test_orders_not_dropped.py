"""Issue #11 on the wire: a running engine with the shipped channel setup, python-hl7's MLLP
client as the RIS/HIS, and the CLI reading back what each message changed (or why not)."""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, EngineProcess, free_port
from tests.integration.conftest import cli_json, send_all, sqlite_rows, write_channel, write_engine_yaml

pytestmark = pytest.mark.timeout(120)

GOLDEN = ROOT / "mappings" / "tests"
MSH = "MSH|^~\\&|RIS|NORTHSIDE|RADBRIDGE|NORTHSIDE|20240312101500||{type}|{cid}|P|2.3.1\r"
PID = "PID|1||MRN6210^^^NORTHSIDE^MR||Haddad^Rami||19750214|M\r"


@pytest.fixture
def ris(engine_process: EngineProcess, tmp_path: Path) -> Iterator[tuple[EngineProcess, int]]:
    """The shipped channel setup on a copy of the shipped mappings (a test may edit its tables)."""
    port = free_port()
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    write_engine_yaml(engine_process, f"mappings_dir: {tmp_path / 'mappings'}\n")
    write_channel(engine_process, "ris", f"""\
        name: ris-inbound
        source: {{type: mllp, port: {port}}}
        accept: {{message_types: ["ADT^*", "ORM^O01", "OMI^O23", "OMG^O19", "ORU^R01"]}}
        mapping: [adt-to-patient, order-to-worklist]
        handlers: [patients, orders]
        """)
    engine_process.start(wait_port=port)
    yield engine_process, port


def _payload(path: Path) -> bytes:
    return path.read_bytes()


def _err(ack: object) -> tuple[str, str]:
    err = ack.all("ERR")[0]  # type: ignore[attr-defined]
    return err[2], err[3].split("^")[0]


def _steps(engine: EngineProcess) -> list[tuple[str, str]]:
    return sqlite_rows(engine.data_dir / "radbridge.db", "SELECT o.placer_order_number, s.status FROM orders o "
                       "JOIN procedure_steps s ON s.order_pk = o.id ORDER BY o.id")


def test_unknown_modality_is_refused_and_a_lab_order_is_said_ignored(ris: tuple[EngineProcess, int]) -> None:
    engine, port = ris
    two = _payload(GOLDEN / "order-to-worklist" / "orm_o01_loinc_mr_and_lab.hl7")
    lab = (MSH.format(type="ORM^O01", cid="LAB1") + PID + "ORC|NW|PLC-9|FIL-9||SC\r"
           "OBR|1|PLC-9|FIL-9|2345-7^Glucose^LN" + "|" * 20 + "LAB\r").encode()
    refused, ignored = send_all(port, [two, lab])
    assert refused.code == "AE" and _err(refused) == ("OBR^2^4", "103")
    assert ignored.code == "AA"
    assert _steps(engine) == []  # the x-ray of the refused message is not half-applied either

    (row,) = cli_json(engine, "messages", "list", "--control-id", "LAB1")
    shown = cli_json(engine, "messages", "show", str(row["id"]))
    assert shown["status"] == "UNCHANGED" and "not an imaging order (OBR-24 'LAB' in" in shown["note"]
    text = engine.cli("messages", "show", str(row["id"])).stdout
    assert "note: order placer PLC-9, filler FIL-9: not an imaging order" in text
    status = cli_json(engine, "status")["channels"]["ris-inbound"]
    assert (status["received"], status["errors"], status["unchanged"]) == (2, 1, 1)


def test_a_ris_cancel_with_only_orc_and_a_minimal_obr_cancels_the_order(ris: tuple[EngineProcess, int]) -> None:
    engine, port = ris
    nw = _payload(GOLDEN / "order-to-worklist" / "orm_o01_two_orders.hl7")
    cancel = (MSH.format(type="ORM^O01", cid="CA1") + PID + "ORC|CA|PLC-6002|FIL-6002\r"
              "OBR|1|PLC-6002|FIL-6002\r").encode()
    again = cancel.replace(b"|CA1|", b"|CA2|")
    assert [a.code for a in send_all(port, [nw, cancel, again])] == ["AA", "AA", "AA"]
    assert _steps(engine) == [("PLC-6001", "SCHEDULED"), ("PLC-6002", "CANCELED")]
    (row,) = cli_json(engine, "messages", "list", "--control-id", "CA2")
    assert cli_json(engine, "messages", "show", str(row["id"]))["note"] == (
        "order placer PLC-6002, filler FIL-6002: CA changed nothing (the step is already CANCELED)")


def test_adt_gaps_on_the_wire(ris: tuple[EngineProcess, int]) -> None:
    engine, port = ris
    a47 = _payload(GOLDEN / "adt-to-patient" / "adt_a47_unknown_prior.hl7")
    no_pid = _payload(GOLDEN / "adt-to-patient" / "adt_a08_no_pid.hl7")
    a09 = (MSH.format(type="ADT^A09", cid="A09") + "EVN|A09\r" + PID).encode()
    answers = send_all(port, [a47, no_pid, a09])
    assert [a.code for a in answers] == ["AA", "AE", "AR"]
    assert _err(answers[1]) == ("PID^1", "101") and _err(answers[2]) == ("MSH^1^9^2", "201")
    db = engine.data_dir / "radbridge.db"
    assert sqlite_rows(db, "SELECT patient_id FROM patients") == [("MRN9300",)]
    assert sqlite_rows(db, "SELECT kind, prior_patient_id FROM patient_merges") == [("change_id", "TMP0042")]


def test_a_refused_order_is_applied_by_a_replay_once_the_table_knows_its_code(
    ris: tuple[EngineProcess, int], tmp_path: Path
) -> None:
    engine, port = ris
    two = _payload(GOLDEN / "order-to-worklist" / "orm_o01_loinc_mr_and_lab.hl7")
    (refused,) = send_all(port, [two])
    assert refused.code == "AE"
    (row,) = cli_json(engine, "messages", "list", "--control-id", "RIS00811")
    with open(tmp_path / "mappings" / "tables" / "procedure_codes.csv", "a") as table:
        table.write("24590-2,MR,MR Brain (LOINC)\n")
    replay = engine.cli("messages", "replay", str(row["id"]))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert replay.stdout == f"{row['id']}: reprocessed: AA, ERROR -> PROCESSED (attempt 2); 0 delivery(ies) re-queued\n"
    assert _steps(engine) == [("PLC-7101", "SCHEDULED"), ("PLC-7102", "SCHEDULED")]  # the lab order: noted


def test_a_replay_reprocesses_the_same_message_once_and_shows_its_attempts(
    ris: tuple[EngineProcess, int], tmp_path: Path
) -> None:
    """The operator's loop: AE, fix the table, replay; the same id moves on, a second replay changes nothing."""
    engine, port = ris
    (refused,) = send_all(port, [_payload(GOLDEN / "order-to-worklist" / "orm_o01_loinc_mr_and_lab.hl7")])
    assert refused.code == "AE" and cli_json(engine, "status")["channels"]["ris-inbound"]["errors"] == 1
    with open(tmp_path / "mappings" / "tables" / "procedure_codes.csv", "a") as table:
        table.write("24590-2,MR,MR Brain (LOINC)\n")
    (row,) = cli_json(engine, "messages", "list")

    first, second = (engine.cli("messages", "replay", str(row["id"])) for _ in range(2))

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert second.stdout == (f"{row['id']}: PROCESSED, not reprocessed (only ERROR and REJECTED are);"
                             " 0 delivery(ies) re-queued\n")
    assert [(r["id"], r["status"]) for r in cli_json(engine, "messages", "list")] == [(row["id"], "PROCESSED")]
    assert _steps(engine) == [("PLC-7101", "SCHEDULED"), ("PLC-7102", "SCHEDULED")]
    status = cli_json(engine, "status")["channels"]["ris-inbound"]
    assert (status["received"], status["errors"]) == (1, 0)
    shown = cli_json(engine, "messages", "show", str(row["id"]))
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert [(a["attempt"], a["via"], a["actor"].split(" ")[0], a["status"], a["ack_code"], a["error_code"])
            for a in shown["attempts"]] == [(1, "receive", "peer", "ERROR", "AE", 103),
                                            (2, "replay", user, "PROCESSED", "AA", None)]
    assert "OBR" in shown["attempts"][0]["error_location"] and shown["attempts"][0]["error"]
    text = engine.cli("messages", "show", str(row["id"])).stdout
    assert f"attempt 2 {shown['attempts'][1]['at']} replay by {user}: PROCESSED AA" in text
    replays = sqlite_rows(engine.data_dir / "radbridge.db",
                          "SELECT actor, object_id FROM audit_events WHERE action = 'message.replay'")
    assert replays == [(user, str(row["id"]))] * 2


def _accessions(engine: EngineProcess) -> list[tuple[str, str]]:
    return sqlite_rows(engine.data_dir / "radbridge.db",
                       "SELECT placer_order_number, accession_number FROM orders ORDER BY id")


def test_an_xo_by_placer_number_alone_corrects_the_accession_of_its_order(ris: tuple[EngineProcess, int]) -> None:
    """hl7fix5: the RIS corrects the accession (OBR-18) of an order it names by ORC-2/OBR-2 only: that order
    is updated (AA), no second order beside it; under a placer number of two procedures it is AE 205."""
    engine, port = ris
    nw = (MSH.format(type="ORM^O01", cid="NW1") + PID + "ORC|NW|PLC-7001^RIS||||||^^^20240312140000^^R\r"
          "OBR|1|PLC-7001^RIS||CT1^CT head^L||||||||||||||ACC-7001||||||CT\r")
    xo = nw.replace("|NW1|", "|XO1|").replace("ORC|NW|", "ORC|XO|").replace("ACC-7001", "ACC-7001X")
    two = (MSH.format(type="ORM^O01", cid="NW2") + PID
           + "".join(f"ORC|NW|PLC-7002^RIS||||||^^^20240312150000^^R\rOBR|{n}|PLC-7002^RIS||CT1^CT head^L"
                     f"||||||||||||||ACC-72{n}||||||CT\r" for n in (1, 2)))
    xo_two = (MSH.format(type="ORM^O01", cid="XO2") + PID + "ORC|XO|PLC-7002^RIS\r"
              "OBR|1|PLC-7002^RIS||CT1^CT head^L||||||||||||||ACC-7299||||||CT\r")
    acks = send_all(port, [p.encode() for p in (nw, xo, two, xo_two)])
    assert [a.code for a in acks] == ["AA", "AA", "AA", "AE"], [a.raw for a in acks]
    assert _err(acks[3]) == ("ORC^1^2", "205") and "ambiguous order identity" in acks[3].raw.decode()
    assert _accessions(engine) == [("PLC-7001", "ACC-7001X"), ("PLC-7002", "ACC-721"), ("PLC-7002", "ACC-722")]
    (row,) = cli_json(engine, "messages", "list", "--control-id", "XO1")
    assert cli_json(engine, "messages", "show", str(row["id"]))["status"] == "PROCESSED"
