"""No PHI in the engine's log at INFO, with real traffic through its failure paths.

A running engine (logging at INFO, as shipped) receives orders over MLLP from
python-hl7 and worklist queries over DICOM from pynetdicom, all carrying
recognisable PHI values: a stored order, a statement the database refuses
(a trigger on SQLite, a CHECK constraint on PostgreSQL, whose error text lists
the whole refused row), a malformed message, an order answered AE, a reused
control id, a matching and a refused worklist query. Everything the process
wrote to stdout/stderr is read back and must contain none of the values, while
the stored messages (read through the audited CLI) do contain them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind
from sqlalchemy import create_engine, text

from tests.conftest import ROOT, EngineProcess, PostgresServer, free_port, wait_for_port
from tests.integration.conftest import send_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NAME = "ZZPHINAME^QQSECRET"
PATIENT_ID = "PHIID98765"
REFUSED_PATIENT_ID = "PHIID55555"
BIRTH_DATE = "19230417"
ACCESSION = "ACCPHI4321"
PASSWORD = "s3cr3tPW"
PHI = ["ZZPHINAME", "QQSECRET", PATIENT_ID, REFUSED_PATIENT_ID, BIRTH_DATE, ACCESSION, "ACCPHI4322"]

SQLITE_REFUSAL = (f"CREATE TRIGGER phi_refused BEFORE INSERT ON patients WHEN NEW.patient_id = '{REFUSED_PATIENT_ID}'"
                  " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
POSTGRES_REFUSAL = (f"ALTER TABLE patients ADD CONSTRAINT phi_refused CHECK (patient_id <> '{REFUSED_PATIENT_ID}')"
                    " NOT VALID")


def orm(control_id: str, patient_id: str = PATIENT_ID, accession: str = ACCESSION,
        start: str = "20261122093000") -> bytes:
    obr = f"OBR|1|PL{control_id}|FL{control_id}|CTHEAD^CT head^L" + "|" * 14 + f"{accession}|RP1|SPS1" + "|" * 4 + "CT"
    segments = [
        f"MSH|^~\\&|RIS|NORTH|RADBRIDGE|NORTH|20261122080000||ORM^O01|{control_id}|P|2.3.1",
        f"PID|1||{patient_id}^^^NORTH^MR||{NAME}||{BIRTH_DATE}|F",
        "PV1|1|O|RAD||||1234^REFER^DOC",
        f"ORC|NW|PL{control_id}|FL{control_id}||SC||^^^{start}^^R",
        obr,
    ]
    return ("\r".join(segments) + "\r").encode("ascii")


def worklist_query(port: int, birth_date: str) -> list[int]:
    """C-FIND by patient name (and birth date); the statuses pynetdicom received."""
    query = Dataset()
    query.PatientName = "ZZPHINAME*"
    query.PatientID = ""
    query.PatientBirthDate = birth_date
    query.AccessionNumber = ""
    ae = AE(ae_title="CT_SCANNER_1")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        return [int(status.Status) for status, _ in assoc.send_c_find(query, ModalityWorklistInformationFind)
                if status]
    finally:
        assoc.release()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, engine_process: EngineProcess) -> Iterator[tuple[EngineProcess, int,
                                                                                           int, str]]:
    """The engine at INFO with the shipped mappings and handlers, DICOM on; (engine, mllp, dicom, url)."""
    mllp, dicom = free_port(), free_port()
    url = ""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        # trust authentication ignores the password; it is there to be masked in the log
        url = server.create_database(f"rb_phi_{mllp}").replace("postgres@", f"postgres:{PASSWORD}@")
    (engine_process.config_dir / "engine.yaml").write_text(f"""
data_dir: {engine_process.data_dir}
database: {{url: "{url}"}}
mappings_dir: {ROOT / 'mappings'}
dicom: {{port: {dicom}}}
logging: {{level: INFO}}
""")
    (engine_process.config_dir / "channels" / "ris.yaml").write_text(f"""
name: ris-inbound
source: {{type: mllp, port: {mllp}}}
accept: {{message_types: ["ADT^*", "ORM^O01"]}}
duplicates: {{on_conflict: reject}}
mapping: [adt-to-patient, order-to-worklist]
handlers: [patients, orders]
""")
    engine_process.start(wait_port=mllp)
    wait_for_port(dicom, proc=engine_process.proc)
    yield engine_process, mllp, dicom, url


def refuse_patient(engine: EngineProcess, url: str) -> None:
    """Make the database refuse the INSERT of REFUSED_PATIENT_ID's row."""
    if not url:
        with sqlite3.connect(engine.data_dir / "radbridge.db") as conn:
            conn.execute(SQLITE_REFUSAL)
        return
    db = create_engine(url)
    with db.begin() as conn:
        conn.execute(text(POSTGRES_REFUSAL))
    db.dispose()


def test_no_phi_reaches_the_log_at_info(engine: tuple[EngineProcess, int, int, str]) -> None:
    process, mllp, dicom, url = engine
    refuse_patient(process, url)

    codes = [ack.code for ack in send_all(mllp, [
        orm("PHI1"),                                                   # stored, AA
        orm("PHI2", patient_id=REFUSED_PATIENT_ID, accession="ACCPHI4322"),  # the database refuses it
        orm("PHI3", start=f"X{BIRTH_DATE}"),                           # invalid ORC-7: AE 102
        orm("PHI1", accession="ACCPHI4322"),                           # control id reused, other content
        f"PID|1||{PATIENT_ID}||{NAME}||{BIRTH_DATE}\r".encode(),      # no MSH at all
    ])]
    statuses = [worklist_query(dicom, ""), worklist_query(dicom, f"{BIRTH_DATE}-{BIRTH_DATE}-{BIRTH_DATE}")]
    stored = process.cli("messages", "list", "--patient-id", PATIENT_ID, "--json")
    refused_id = json.loads(process.cli("messages", "list", "--control-id", "PHI2", "--json").stdout)[0]["id"]
    replay = process.cli("messages", "replay", str(refused_id))  # the CLI runs the channel: refused again
    process.stop()

    assert codes[:4] == ["AA", "AE", "AE", "AE"] and codes[4] in ("AE", "AR")
    assert 0xFF00 in statuses[0] and statuses[0][-1] == 0x0000  # the order matched by name
    assert statuses[1][-1] >= 0xA000                             # the bad range is refused
    assert [r["control_id"] for r in json.loads(stored.stdout)] == ["PHI1", "PHI3", "PHI1"]  # the values were sent
    log = process.log()
    assert "handler failed on message" in log and "Traceback" in log, log  # the refusal was logged
    assert "radbridge stopping" in log
    leaked = [value for value in PHI if value in log]
    assert leaked == [], log
    assert replay.stdout.strip() == (f"{refused_id}: reprocessed: AE, ERROR -> ERROR (attempt 2);"
                                     " 0 delivery(ies) re-queued")
    assert "handler failed on message" in replay.stderr
    assert [value for value in PHI if value in replay.stderr] == [], replay.stderr
    if url:
        assert "store: postgresql+psycopg://postgres:***@127.0.0.1" in log
        assert PASSWORD not in log and PASSWORD not in replay.stderr

