"""The change feed and the projector on SQLite and PostgreSQL: triggers, versions, backfill, removal."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from alembic import command
from sqlalchemy import Connection, func, insert, select, text, update

from engine.domain.tables import orders, patients, procedure_steps, series, studies
from engine.fhir import triggers
from engine.fhir.model import FhirSettings
from engine.fhir.projector import project_all
from engine.fhir.search import read
from engine.fhir.tables import fhir_pending, fhir_refs, fhir_resources, fhir_versions
from engine.store.database import Database
from engine.store.migrate import alembic_config, upgrade

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
SETTINGS = FhirSettings(UTC, dicomweb_base="https://pacs.example/dicom-web")
UID = "1.2.826.0.1.3680043.10.995.1"


def _seed(conn: Connection) -> None:
    pk = conn.execute(insert(patients).values(patient_id="P1", issuer="HOSP", patient_name="DOE^JANE", sex="F",
                                              birth_date="19800102", created_at=NOW,
                                              updated_at=NOW)).inserted_primary_key[0]
    order = conn.execute(insert(orders).values(patient_pk=pk, order_key="k1", placer_order_number="PL1",
                                               accession_number="ACC1", study_instance_uid=UID, created_at=NOW,
                                               updated_at=NOW)).inserted_primary_key[0]
    conn.execute(insert(procedure_steps).values(order_pk=order, status="SCHEDULED", modality="CT",
                                                start_datetime="20261205093000", created_at=NOW, updated_at=NOW))


def _json(db: Database, res_type: str, res_id: str) -> dict:
    stored = db.read(lambda c: read(c, res_type, res_id))
    assert stored is not None
    return dict(json.loads(stored.json))


def _pending(db: Database) -> int:
    return int(db.read(lambda c: c.execute(select(func.count()).select_from(fhir_pending)).scalar_one()))


def test_domain_changes_become_resources_and_versions_only_on_change(db: Database) -> None:
    db.writer.call(_seed)
    assert _pending(db) == 3  # patient, order, step: all in the seeding transaction
    project_all(db, SETTINGS)
    assert _pending(db) == 0
    assert _json(db, "ImagingStudy", UID)["status"] == "registered"
    assert _json(db, "ServiceRequest", "1")["identifier"][1]["value"] == "ACC1"
    db.writer.call(lambda c: c.execute(update(orders).values(updated_at=datetime.now(UTC))))
    project_all(db, SETTINGS)
    assert _json(db, "ServiceRequest", "1")["meta"]["versionId"] == "1"  # nothing shown changed
    db.writer.call(lambda c: c.execute(update(procedure_steps).values(status="CANCELED")))
    project_all(db, SETTINGS)
    assert _json(db, "ImagingStudy", UID)["status"] == "cancelled"
    assert _json(db, "ServiceRequest", "1")["status"] == "revoked"
    versions = db.read(lambda c: c.execute(select(fhir_versions.c.version_id).order_by(fhir_versions.c.version_id)
                                           .join(fhir_resources).where(fhir_resources.c.res_id == UID)).scalars().all())
    assert versions == [1, 2]


def test_series_and_stored_instances_make_the_study_available(db: Database) -> None:
    db.writer.call(_seed)
    project_all(db, SETTINGS)

    def performed(conn: Connection) -> None:
        study = conn.execute(insert(studies).values(study_instance_uid=UID, patient_pk=1, order_pk=1,
                                                    first_seen_at=NOW, last_seen_at=NOW)).inserted_primary_key[0]
        conn.execute(insert(series).values(study_pk=study, series_instance_uid=f"{UID}.1", modality="CT",
                                           number_of_instances=4, series_number=2, first_seen_at=NOW,
                                           last_seen_at=NOW))

    db.writer.call(performed)
    assert _pending(db) >= 1
    project_all(db, SETTINGS)
    study = _json(db, "ImagingStudy", UID)
    assert study["status"] == "available" and study["numberOfInstances"] == 4
    assert study["series"][0] == {"uid": f"{UID}.1", "number": 2, "modality": {
        "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}, "numberOfInstances": 4,
        "endpoint": [{"reference": "Endpoint/dicomweb"}]}


def test_a_study_whose_rows_are_gone_is_removed_with_its_index(db: Database) -> None:
    db.writer.call(_seed)
    project_all(db, SETTINGS)
    db.writer.call(lambda c: c.execute(update(orders).values(study_instance_uid="1.2.3.999")))
    project_all(db, SETTINGS)
    assert db.read(lambda c: read(c, "ImagingStudy", UID)) is None
    assert _json(db, "ImagingStudy", "1.2.3.999")["basedOn"] == [{"reference": "ServiceRequest/1"}]
    refs = db.read(lambda c: c.execute(select(func.count()).select_from(fhir_refs)
                                       .where(fhir_refs.c.param == "ImagingStudy.basedon")).scalar_one())
    assert refs == 1


def test_triggers_are_reinstalled_after_a_table_rebuild(db: Database) -> None:
    db.writer.call(lambda c: triggers.uninstall(c))
    db.writer.call(_seed)
    assert _pending(db) == 0  # without triggers a change is invisible: why the engine reinstalls them
    db.writer.call(triggers.install)
    db.writer.call(triggers.install)  # idempotent
    db.writer.call(lambda c: c.execute(update(patients).values(patient_name="DOE^JOAN")))
    assert _pending(db) == 1


def test_the_migration_backfills_existing_rows(db: Database) -> None:
    with db.write_engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0010")
    db.writer.call(_seed)
    upgrade(db.write_engine)
    kinds = db.read(lambda c: sorted(r[0] for r in c.execute(select(fhir_pending.c.kind))))
    assert kinds == ["Patient", "ServiceRequest"]
    project_all(db, SETTINGS)
    assert _json(db, "ImagingStudy", UID)["subject"] == {"reference": "Patient/1"}
    assert db.read(lambda c: c.execute(text("SELECT count(*) FROM fhir_resources")).scalar_one()) == 3


def test_one_change_that_cannot_be_projected_does_not_stop_the_others(db: Database, monkeypatch, caplog) -> None:
    import asyncio

    from engine.fhir.projector import Projector
    from engine.fhir.resources import patient

    real = patient.build

    def failing(conn: Connection, keys: set[str], settings: FhirSettings) -> dict:
        if "2" in keys:
            raise RuntimeError("a builder bug")
        return real(conn, keys, settings)

    monkeypatch.setattr(patient, "build", failing)

    def two_patients(conn: Connection) -> None:
        for pid in ("A", "B", "C"):
            conn.execute(insert(patients).values(patient_id=pid, created_at=NOW, updated_at=NOW))

    db.writer.call(two_patients)

    async def run() -> None:
        projector = Projector(db, SETTINGS, interval=0.05)
        await projector.start()
        for _ in range(200):
            if not _pending(db):
                break
            await asyncio.sleep(0.05)
        await projector.stop()

    asyncio.run(run())
    assert _pending(db) == 0
    stored = db.read(lambda c: sorted(c.execute(select(fhir_resources.c.res_id)
                                                .where(fhir_resources.c.res_type == "Patient")).scalars()))
    assert stored == ["1", "3"]
    assert "skipped a change it cannot project (Patient 2)" in caplog.text


def test_searches_run_in_sql_on_both_backends(db: Database) -> None:
    from engine.fhir.query import parse
    from engine.fhir.search import run

    def many(conn: Connection) -> None:
        _seed(conn)
        for n in range(2, 8):
            conn.execute(insert(orders).values(patient_pk=1, order_key=f"k{n}", accession_number=f"ACC{n}",
                                               study_instance_uid=f"{UID}.{n}", created_at=NOW, updated_at=NOW))
            conn.execute(insert(procedure_steps).values(order_pk=n, status="SCHEDULED",
                                                        modality="MR" if n % 2 else "CT",
                                                        start_datetime="20261205093000", created_at=NOW,
                                                        updated_at=NOW))

    db.writer.call(many)
    project_all(db, SETTINGS)

    def search(*pairs: tuple[str, str]) -> tuple[list[str], int, int | None]:
        page = db.read(lambda c: run(c, parse("ImagingStudy", list(pairs), UTC)))
        return [m.res_id for m in page.matches], page.total, page.next_cursor

    assert search(("patient", "Patient/1"))[1] == 7
    assert search(("patient", "Patient/1"), ("modality", "MR"), ("_lastUpdated", "gt2000"))[1] == 3
    first, total, cursor = search(("patient", "Patient/1"), ("_count", "4"))
    rest, _, end = search(("patient", "Patient/1"), ("_count", "4"), ("_cursor", str(cursor)))
    assert total == 7 and len(first) == 4 and len(rest) == 3 and end is None and not set(first) & set(rest)
    assert search(("_id", UID))[0] == [UID] and search(("identifier", "ACC3"))[0] == [f"{UID}.3"]
    assert search(("started", "2026-12-05"), ("status", "registered"))[1] == 7


def test_processes_starting_together_replace_the_triggers_one_after_the_other(postgres) -> None:
    """Two engine processes on one PostgreSQL database install the triggers at start-up at once; without the
    schema lock one of them failed with "tuple concurrently updated" and the process exited (seen in CI)."""
    import threading

    from sqlalchemy import create_engine

    url = postgres.create_database("triggers_together")
    Database(url).migrate()
    engine = create_engine(url, pool_size=8)
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def install() -> None:
        try:
            for _ in range(5):
                with engine.begin() as conn:
                    barrier.wait(timeout=30)
                    triggers.install(conn)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=install) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    engine.dispose()
    assert errors == []


def _trigger_oids(conn: Connection) -> dict[str, int]:
    return dict(conn.execute(text("SELECT tgname, oid FROM pg_trigger WHERE tgname LIKE 'fhir\\_%'")).all())


def test_triggers_in_place_are_not_replaced_while_other_transactions_use_their_tables(postgres) -> None:
    """Replacing a trigger takes an ACCESS EXCLUSIVE lock on its table. An engine's start-up did that while
    its receive workers (or another engine) were writing, and PostgreSQL broke the deadlock by rolling a
    C-STORE's transaction back (0xA700/0xC211, seen in CI). Triggers already as they should be are left alone."""
    from sqlalchemy import create_engine

    url = postgres.create_database("triggers_in_place")
    Database(url).migrate()
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            before = _trigger_oids(conn)
        assert len(before) == len(triggers.SOURCES)
        with engine.connect() as reader, reader.begin():
            for table in ("patients", "orders", "studies", "series", "instances", "reports"):
                reader.execute(text(f"SELECT count(*) FROM {table}"))  # holds ACCESS SHARE until it ends
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '2s'"))
                triggers.install(conn)  # before: waited for the reader, then "canceling statement due to lock timeout"
                assert _trigger_oids(conn) == before
        with engine.begin() as conn:  # one that differs (another version's, or changed by hand) is replaced
            conn.execute(text("COMMENT ON TRIGGER fhir_orders_update ON orders IS 'radbridge 0'"))
            conn.execute(text("DROP TRIGGER fhir_series_insert ON series"))
        with engine.begin() as conn:
            triggers.install(conn)
            after = _trigger_oids(conn)
            assert set(after) == set(before)
            assert {name for name in before if after[name] != before[name]} == {"fhir_orders_update",
                                                                                 "fhir_series_insert"}
    finally:
        engine.dispose()


def _statements(db: Database) -> list[str]:
    """Every SQL statement either engine of ``db`` runs from now on (a list that grows)."""
    from sqlalchemy import event

    seen: list[str] = []
    for engine in (db.read_engine, db.write_engine):
        event.listen(engine, "before_cursor_execute", lambda *args: seen.append(str(args[2])))
    return seen


async def _until(condition, seconds: float) -> float:
    """Seconds until ``condition()`` held (polled every 20 ms); fails after ``seconds``."""
    import asyncio
    import time

    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "timed out"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_an_idle_projector_queries_nothing_and_a_commit_wakes_it_at_once(db: Database) -> None:
    """Idle (nothing committed), the projector runs no statement at all until its fallback poll; a commit
    whose triggers add pending rows wakes it within its debounce, not after the fallback interval."""
    import asyncio

    from engine.fhir.projector import Projector

    async def run() -> None:
        projector = Projector(db, SETTINGS, debounce=0.05, idle_interval=60.0)
        await projector.start()
        await _until(lambda: _pending(db) == 0, 10)  # the Endpoint row of the start
        # The cycle's own commit wakes it once more: it looks, finds nothing (under load that look can
        # come well after 0.5 s, as the interval wait after a cycle allows: CI saw it inside the window).
        await asyncio.sleep(2.0)
        seen = _statements(db)
        await asyncio.sleep(1.5)
        assert seen == []  # idle: not even "is anything pending?"
        await asyncio.get_running_loop().run_in_executor(None, db.writer.call, _seed)
        waited = await _until(lambda: db.read(lambda c: read(c, "ImagingStudy", UID)) is not None, 10)
        assert waited < 3  # far below the 60 s fallback poll
        await projector.stop()

    asyncio.run(run())
    assert _json(db, "Patient", "1")["name"][0]["family"] == "DOE"


def test_changes_committed_by_another_process_are_projected_by_the_fallback_poll(db: Database) -> None:
    """Another process's commits (the CLI, a second engine) do not reach the commit listener: the slow poll
    still projects them."""
    import asyncio

    from engine.fhir.projector import Projector

    other = Database(db.url)
    try:
        async def run() -> None:
            projector = Projector(db, SETTINGS, debounce=0.05, idle_interval=0.5)
            await projector.start()
            await _until(lambda: _pending(db) == 0, 10)
            other.writer.call(_seed)
            await _until(lambda: db.read(lambda c: read(c, "ImagingStudy", UID)) is not None, 10)
            await projector.stop()

        asyncio.run(run())
    finally:
        other.close()


def test_a_scheduled_start_is_read_in_the_site_zone_and_an_impossible_one_is_none() -> None:
    from zoneinfo import ZoneInfo

    from engine.fhir.instant import search_range
    from engine.fhir.resources.service_request import scheduled_start

    vienna = FhirSettings(ZoneInfo("Europe/Vienna"))
    found = scheduled_start("20261205093000", vienna)
    assert found is not None and found[0] == "2026-12-05T09:30:00+01:00"
    summer = scheduled_start("20260705093000", vienna)
    assert summer is not None and summer[0] == "2026-07-05T09:30:00+02:00"
    assert found[1] == search_range("2026-12-05T09:30:00+01:00", vienna.site_zone)
    for impossible in ("20261305093000", "20260230093000", "20261205253000", "20261205093060", "2026120509300",
                       "2026120509300x", ""):
        assert scheduled_start(impossible, vienna) is None, impossible


def test_a_service_request_of_several_steps_is_active_while_one_is(db: Database) -> None:
    """One requested procedure, a step per IPC: the first (CT) dropped by an XO, the MR still scheduled."""
    db.writer.call(_seed)
    db.writer.call(lambda c: c.execute(insert(procedure_steps).values(
        order_pk=1, status="SCHEDULED", modality="MR", start_datetime="20261205110000", created_at=NOW,
        updated_at=NOW)))
    db.writer.call(lambda c: c.execute(update(procedure_steps).where(procedure_steps.c.modality == "CT")
                                       .values(status="DISCONTINUED")))
    project_all(db, SETTINGS)
    request = _json(db, "ServiceRequest", "1")
    assert (request["status"], request["occurrenceDateTime"]) == ("active", "2026-12-05T11:00:00+00:00")
    db.writer.call(lambda c: c.execute(update(procedure_steps).values(status="DISCONTINUED")))
    project_all(db, SETTINGS)
    assert _json(db, "ServiceRequest", "1")["status"] == "revoked"
