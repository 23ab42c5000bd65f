"""The patient id and accession number a message without them is listed under (engine.channel.persist).

An ORC-only cancel names neither: the handlers tell whose orders it touched. When they touched the
orders of two patients, the row's patient id and accession number come from one and the same
outcome (not the patient of the first and the accession of the second), and the note says the
message was ambiguous.
"""

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from engine.channel.persist import Persister
from engine.channel.prepare import Preparer
from engine.config.models import ChannelConfig
from engine.store.database import Database
from engine.store.schema import messages
from tests.conftest import migrated

CANCEL = ("MSH|^~\\&|RIS|HOSP|RB|RAD|20261122083000||ORM^O01|C1|P|2.5.1\r"
          "ORC|CA|P1\rORC|CA|P2\r")


class Touches:
    """A handler whose records applied to the given (patient id, accession number) pairs."""

    name = "touches"

    def __init__(self, *keys: tuple[str, str]) -> None:
        self.keys = keys

    def apply(self, conn, ctx):
        for patient_id, accession in self.keys:
            ctx.note(True, patient_id=patient_id, accession_number=accession)
        return []


@pytest.fixture
def sqlite(tmp_path) -> Iterator[Database]:
    yield from migrated(f"sqlite:///{tmp_path / 'rb.db'}")


def persist(db: Database, handler: Touches) -> tuple[str, str, str]:
    cfg = ChannelConfig.model_validate({"name": "c", "source": {"type": "mllp", "port": 0}})
    prep, pers = Preparer(cfg), Persister(cfg, [handler], "RB", "RAD")
    with db.write_engine.begin() as conn:
        stored = pers.persist(conn, prep.prepare(CANCEL, CANCEL.encode(), "ascii"), "test")
        row = conn.execute(select(messages.c.patient_id, messages.c.accession_number, messages.c.note)
                           .where(messages.c.id == stored.message_id)).one()
    return row.patient_id or "", row.accession_number or "", row.note or ""


def test_keys_of_one_patient_are_learned(sqlite: Database) -> None:
    patient_id, accession, note = persist(sqlite, Touches(("MRN1", "ACC1"), ("MRN1", "ACC1")))
    assert (patient_id, accession) == ("MRN1", "ACC1")
    assert "ambiguous" not in note


def test_patient_id_and_accession_come_from_the_same_outcome(sqlite: Database) -> None:
    # The first order touched has no accession number stored; the second is another patient's.
    patient_id, accession, note = persist(sqlite, Touches(("MRN1", ""), ("MRN2", "ACC2")))
    assert (patient_id, accession) == ("MRN1", "")  # before: MRN1 with MRN2's ACC2
    assert "orders of 2 patients" in note and "MRN" not in note  # no PHI in the note


def test_an_outcome_with_both_keys_is_not_mixed_with_another(sqlite: Database) -> None:
    # The first outcome naming a patient gives both (its patient orders the outbox).
    patient_id, accession, note = persist(sqlite, Touches(("", "ACC1"), ("MRN2", "ACC2")))
    assert (patient_id, accession) == ("MRN2", "ACC2")  # before: MRN2 with ACC1
    assert "2 accession numbers" in note
