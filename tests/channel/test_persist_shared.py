"""Two engine processes applying messages for the same new patient at once (one PostgreSQL database).

Two connections stand for the two processes. The first creates the patient
and has not committed yet; the second's insert of the same patient waits for
it and then meets the unique key.
"""

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from engine.channel.persist import Persister, Stored
from engine.channel.prepare import Preparer
from engine.config.models import ChannelConfig
from engine.domain.patients import PatientPolicy, ensure_patient
from engine.domain.tables import patients
from engine.hl7.er7 import Message
from engine.store.database import Database
from tests.conftest import PostgresServer, migrated

ORM = ("MSH|^~\\&|RIS|HOSP|RB|RAD|20261122083000||ORM^O01|{cid}|P|2.5.1\r"
       "PID|1||NEW1^^^HOSP||DOE^JANE||19700101|F\rORC|NW|{cid}\rOBR|1|{cid}||CT^CT HEAD\r")


class EnsurePatient:
    """The orders handler's first step: the order's patient, created if unknown."""

    name = "ensure-patient"

    def apply(self, conn, ctx):
        ensure_patient(conn, "NEW1", "HOSP", PatientPolicy(), ctx.received_at)
        return []


class AlwaysConflicts:
    """A handler whose insert fails on a unique key every time (a bug, not a race)."""

    name = "always-conflicts"

    def apply(self, conn, ctx):
        ensure_patient(conn, "NEW1", "HOSP", PatientPolicy(), ctx.received_at)
        conn.execute(patients.insert().values(patient_id="NEW1", issuer="HOSP", status="ACTIVE",
                                              created_at=ctx.received_at, updated_at=ctx.received_at))
        return []


@pytest.fixture
def pg(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[Database]:
    yield from migrated(postgres.create_database(f"persist_{abs(hash(request.node.name)) % 10**9}"))


def persister(handler) -> tuple[Preparer, Persister]:
    cfg = ChannelConfig.model_validate({"name": "c", "source": {"type": "mllp", "port": 0}})
    return Preparer(cfg), Persister(cfg, [handler], "RB", "RAD")


def persist(prep: Preparer, pers: Persister, conn, cid: str) -> Stored:
    raw = ORM.format(cid=cid).encode()
    return pers.persist(conn, prep.prepare(raw.decode(), raw, "ascii"), "test")


def test_the_same_new_patient_from_two_processes_at_once_is_answered_aa_on_both(pg: Database) -> None:
    prep, pers = persister(EnsurePatient())
    second: list[Stored] = []
    with pg.write_engine.connect() as first_conn, pg.write_engine.connect() as second_conn:
        first_conn.begin()
        first = persist(prep, pers, first_conn, "C1")  # the patient exists, not committed yet

        def other_process() -> None:
            with second_conn.begin():
                second.append(persist(prep, pers, second_conn, "C2"))  # waits for the first, then conflicts

        thread = threading.Thread(target=other_process)
        thread.start()
        time.sleep(0.5)  # the second insert is waiting on the first transaction now
        first_conn.commit()
        thread.join(30)
    assert (first.ack_code, second[0].ack_code) == ("AA", "AA")
    assert pg.read(lambda c: c.execute(select(func.count()).select_from(patients)).scalar()) == 1


def test_a_conflict_that_stays_is_still_answered_ae_207(pg: Database) -> None:
    prep, pers = persister(AlwaysConflicts())
    with pg.write_engine.connect() as conn, conn.begin():
        stored = persist(prep, pers, conn, "C1")
    assert stored.ack_code == "AE"
    assert Message(stored.ack).segment("ERR").value(3) == "207"
