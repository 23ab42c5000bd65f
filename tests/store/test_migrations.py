"""The Alembic migrations build exactly the schema the code's table definitions describe."""

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select, text

import engine.domain.tables  # noqa: F401 - registers the domain tables on the shared metadata
from engine.store.migrate import alembic_config, upgrade
from engine.store.schema import messages, metadata


def test_migrated_schema_matches_the_table_definitions(db) -> None:
    with db.write_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata)
    assert diff == []


def test_every_migration_downgrades_and_upgrades_again(db) -> None:
    with db.write_engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")
    with db.write_engine.connect() as conn:
        indexes = {i["name"] for i in inspect(conn).get_indexes("orders")}
    assert "ix_orders_placer_order_number" in indexes
    upgrade(db.write_engine)
    with db.write_engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata) == []


def _message(mapped: str) -> dict[str, object]:
    return {
        "channel": "c", "received_at": datetime(2026, 11, 22, 8, 0, tzinfo=UTC), "peer": "", "status": "PROCESSED",
        "control_id": "M1", "sender": "", "sending_application": "", "sending_facility": "", "message_type": "ORM^O01",
        "version": "2.5.1", "patient_id": "", "accession_number": "", "charset": "ascii", "body_hash": "h",
        "raw": b"MSH", "text": "MSH", "ack_code": "AA", "ack": "", "error_code": None, "error_location": "",
        "error": "", "duplicate_count": 0, "mapped": mapped,
    }  # fmt: skip


def test_mapped_records_survive_downgrade_and_upgrade(db) -> None:
    db.writer.call(lambda c: c.execute(insert(messages).values(**_message('[{"record": "order"}]'))))
    db.writer.call(lambda c: c.execute(insert(messages).values(**{**_message(""), "control_id": "M2"})))
    with db.write_engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    with db.write_engine.connect() as conn:
        stages = conn.execute(text("SELECT message_id, stage, content FROM message_stages")).all()
    assert [(s, c) for _, s, c in stages] == [("mapped", '[{"record": "order"}]')]
    upgrade(db.write_engine)
    mapped = db.read(lambda c: c.execute(select(messages.c.control_id, messages.c.mapped)
                                         .order_by(messages.c.id)).all())
    assert [tuple(r) for r in mapped] == [("M1", '[{"record": "order"}]'), ("M2", "")]


def test_station_aes_have_no_rowid_on_sqlite_after_every_path(tmp_path) -> None:
    db = next(iter(migrated_sqlite(tmp_path)))
    try:
        def table_sql() -> str:
            return db.read(lambda c: c.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'step_station_aes'")).scalar_one())

        assert "WITHOUT ROWID" in table_sql().upper()
        with db.write_engine.begin() as conn:
            cfg = alembic_config(db.url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0006")
        assert "WITHOUT ROWID" not in table_sql().upper()
        upgrade(db.write_engine)
        sql = table_sql().upper()
        assert "WITHOUT ROWID" in sql and "ON DELETE CASCADE" in sql
        with db.write_engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata) == []
    finally:
        db.close()


def migrated_sqlite(tmp_path):
    from tests.conftest import migrated

    yield from migrated(f"sqlite:///{tmp_path / 'rb.db'}")


def test_listing_by_error_status_uses_the_partial_index(tmp_path) -> None:
    from engine.cli.queries import MessageFilter, list_messages

    db = next(iter(migrated_sqlite(tmp_path)))
    try:
        for n, status in enumerate(["PROCESSED", "ERROR", "PROCESSED", "REJECTED"]):
            row = {**_message(""), "control_id": f"S{n}", "status": status}
            db.writer.call(lambda c, row=row: c.execute(insert(messages).values(**row)))
        found = db.read(lambda c: list_messages(c, MessageFilter(status="ERROR")))
        assert [r["control_id"] for r in found] == ["S1"]
        assert [r["control_id"] for r in db.read(lambda c: list_messages(c, MessageFilter(status="PROCESSED")))] \
            == ["S2", "S0"]

        def plan(conn):
            from engine.cli.queries import _query

            stmt = _query(MessageFilter(status="ERROR")).compile(conn, compile_kwargs={"literal_binds": True})
            return " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {stmt}")))

        assert "ix_messages_unprocessed" in db.read(plan)
    finally:
        db.close()


def test_a_downgrade_below_0021_refuses_to_cut_step_identifiers(db, tmp_path) -> None:
    """Review: on PostgreSQL the downgrade cut the widened identifiers (and two station AE titles cut alike
    collided in the primary key); it now refuses while any is longer than the old column. SQLite does not
    enforce VARCHAR lengths: there the downgrade changes nothing and keeps the value."""
    import pytest

    from engine.config.models import EngineConfig
    from engine.domain.handlers import OrdersHandler, PatientsHandler, order_policy, patient_policy
    from engine.domain.tables import procedure_steps
    from tests.domain.factories import apply_records, order, patient

    config = EngineConfig(mappings_dir=tmp_path / "mappings", timezone="UTC")
    apply_records(db, PatientsHandler(patient_policy(config)), [patient("P1")])
    apply_records(db, OrdersHandler(order_policy(config)),
                  [order("PL1", scheduled_procedure_step_id="SPS-1234567890-LONG")])
    with db.write_engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        if db.write_engine.dialect.name == "postgresql":
            with pytest.raises(RuntimeError, match=r"procedure_steps\.sps_id: 1 value\(s\) longer than 16"):
                command.downgrade(cfg, "0020")
        else:
            command.downgrade(cfg, "0020")
    upgrade(db.write_engine)
    assert db.read(lambda c: c.execute(select(procedure_steps.c.sps_id)).scalar_one()) == "SPS-1234567890-LONG"


def test_the_duplicate_lookup_of_every_message_uses_its_own_index_not_a_scan_of_the_window(tmp_path) -> None:
    """Every received message looks for an original it repeats. SQLite's planner took the (channel,
    received_at) index for it: a scan of every message of the window, per message (37 ms a lookup at
    35,000 messages; the order path fell from ~300 to ~25 messages/s)."""
    from engine.channel.persist import _FIND_ORIGINAL

    db = next(iter(migrated_sqlite(tmp_path)))
    try:
        rows = [{**_message(""), "control_id": f"S{n}", "sender": "RIS|HOSP"} for n in range(50)]
        db.writer.call(lambda c: c.execute(insert(messages), rows))

        def plan(conn):
            compiled = _FIND_ORIGINAL.statement.compile(conn)  # as the engine runs it: bound parameters
            given = {"channel": "c", "sender": "RIS|HOSP", "control_id": "S7", "since": "2026-11-21"}
            values = tuple(given.get(name, compiled.params[name]) for name in compiled.positiontup or [])
            return " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values))

        shown = db.read(plan)
        assert "ix_messages_channel_sender_control_id_received_at" in shown, shown
    finally:
        db.close()
