"""The C-STORE indexing transaction (engine.domain.ingest): what it writes, and how few statements it takes.

The statement counts are the receive path's budget: an image of a known series is
indexed with five statements, then one per copy record and one per outbox row, and no
step after the index reads the instance or study row again (each did once, doubling
the per-image cost). Counted on SQLite with the driver's trace hook; a trigger's
statements (the FHIR change feed) are reported as repeats of the statement that fired
them, and are folded into it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from engine.archive.copy_tables import instance_copies
from engine.config.models import DicomDestinationConfig, EngineConfig
from engine.domain.handlers import OrdersHandler
from engine.domain.ingest import index_received
from engine.domain.instance_tables import instances
from engine.domain.instances import IndexOutcome, InstanceAttributes, StoredFile
from engine.domain.reconcile import OrderMatch
from engine.domain.tables import orders, procedure_steps, studies
from engine.store.database import Database
from engine.store.schema import outbox

from .factories import apply_records, order, patient

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
CT = "1.2.840.10008.5.1.4.1.1.2"


def _attrs(n: int, accession: str = "ACC1") -> InstanceAttributes:
    return InstanceAttributes(CT, f"1.2.9.{n}", "1.2.9", "1.2.9.0", patient_id="P1", accession_number=accession,
                              modality="CT", instance_number=n)  # fmt: skip


def _stored(n: int) -> StoredFile:
    return StoredFile("primary", f"x/{n}.dcm", 10, f"{n:064d}", "1.2.840.10008.1.2.1", "CT1", NOW)


def _dest(name: str) -> DicomDestinationConfig:
    return DicomDestinationConfig.model_validate(
        {"type": "dicom", "name": name, "host": "pacs.example", "called_ae_title": "PACS"})


def _traced(db: Database, work: Callable[[Connection], Any]) -> tuple[Any, list[str]]:
    """Run ``work`` in a committed transaction; its result and the statements it executed."""
    seen: list[str] = []

    def run(conn: Connection) -> Any:
        raw: Any = conn.connection.dbapi_connection
        raw.set_trace_callback(seen.append)
        try:
            return work(conn)
        finally:
            raw.set_trace_callback(None)

    result = db.writer.call(run)
    folded = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]  # a trigger repeats its statement
    return result, [" ".join(s.split()[:3]) for s in folded]


def _ingest(db: Database, n: int, *, match: OrderMatch | None = None, replicate: bool = False,
            destinations: tuple[DicomDestinationConfig, ...] = (), accession: str = "ACC1",
            ) -> tuple[tuple[IndexOutcome, int], list[str]]:
    return _traced(db, lambda c: index_received(
        c, _attrs(n, accession), _stored(n), "replace", match=match, strict=True, meta_sha256="m" * 64,
        replicate=replicate, destinations=destinations, now=NOW))  # fmt: skip


def _match(db: Database, handler: OrdersHandler) -> OrderMatch:
    apply_records(db, handler, [patient("P1"), order("PL1", accession_number="ACC1")])
    row = db.read(lambda c: c.execute(select(procedure_steps.c.id, procedure_steps.c.order_pk, orders.c.patient_pk)
                                      .join(orders, orders.c.id == procedure_steps.c.order_pk)).one())
    return OrderMatch(int(row.order_pk), int(row.id), int(row.patient_pk), "accession_number")


INDEX = ["SELECT instances.id, instances.sha256,", "SELECT series.study_pk, series.id,",
         "INSERT INTO instances", "UPDATE series SET", "UPDATE studies SET"]  # fmt: skip
COPIES = ["INSERT INTO instance_copies"]
QUEUED = ["INSERT INTO outbox"]


def test_an_unscheduled_image_of_a_known_series_costs_the_index_and_its_copy_record_only(db: Database) -> None:
    _ingest(db, 1)
    (outcome, queued), statements = _ingest(db, 2)
    assert (outcome, queued) == (IndexOutcome.STORED, 0)
    assert statements == INDEX + COPIES


def test_copies_owed_and_forwarding_add_one_insert_each_and_no_lookup(db: Database) -> None:
    dests = (_dest("pacs"), _dest("ai"))
    _ingest(db, 1, replicate=True, destinations=dests)
    (outcome, queued), statements = _ingest(db, 2, replicate=True, destinations=dests)
    assert (outcome, queued) == (IndexOutcome.STORED, 2)
    assert statements == INDEX + COPIES + QUEUED * 3
    rows = db.read(lambda c: c.execute(select(outbox.c.destination, outbox.c.payload).order_by(outbox.c.id)).all())
    pk = db.read(lambda c: c.execute(select(instances.c.id).where(instances.c.sop_instance_uid == "1.2.9.2"))
                 .scalar_one())
    assert [r.destination for r in rows[-3:]] == ["archive:secondary", "pacs", "ai"]
    assert all(f'"instance_pk": {pk}' in r.payload.decode() for r in rows[-3:])
    copies = db.read(lambda c: c.execute(select(instance_copies).where(instance_copies.c.instance_pk == pk)).one())
    assert (copies.meta_sha256, copies.secondary_state) == ("m" * 64, "PENDING")


def test_a_matched_image_of_a_study_already_linked_to_its_order_writes_no_link(
        db: Database, orders_handler: OrdersHandler) -> None:
    match = _match(db, orders_handler)
    _, first = _ingest(db, 1, match=match)
    assert any(s.startswith("UPDATE studies SET") for s in first[len(INDEX):])  # linked by the first image
    (outcome, _), statements = _ingest(db, 2, match=match)
    assert outcome is IndexOutcome.STORED
    assert statements == INDEX + COPIES
    study = db.read(lambda c: c.execute(select(studies)).one())
    assert (study.order_pk, study.step_pk, study.patient_pk) == (match.order_pk, match.step_pk, match.patient_pk)


def test_a_matched_image_still_links_a_study_linked_otherwise(db: Database, orders_handler: OrdersHandler) -> None:
    match = _match(db, orders_handler)
    _ingest(db, 1)  # unscheduled: the strict index leaves the study unlinked
    assert db.read(lambda c: c.execute(select(studies.c.order_pk)).scalar()) is None
    _ingest(db, 2, match=match)
    study = db.read(lambda c: c.execute(select(studies)).one())
    assert (study.order_pk, study.step_pk, study.accession_number) == (match.order_pk, match.step_pk, "ACC1")


def test_the_strict_index_leaves_a_new_study_unscheduled_even_when_its_accession_names_an_order(
        db: Database, orders_handler: OrdersHandler, engine_config: EngineConfig) -> None:
    _match(db, orders_handler)  # an order with accession ACC1, but the matcher found none for the image
    _ingest(db, 1)
    _ingest(db, 2)
    assert db.read(lambda c: c.execute(select(studies.c.order_pk)).scalar()) is None


def test_a_resend_writes_nothing_after_the_duplicate_check(db: Database) -> None:
    _ingest(db, 1, replicate=True, destinations=(_dest("pacs"),))
    (outcome, queued), statements = _ingest(db, 1, replicate=True, destinations=(_dest("pacs"),))
    assert (outcome, queued) == (IndexOutcome.UNCHANGED, 0)
    assert statements == INDEX[:1]
