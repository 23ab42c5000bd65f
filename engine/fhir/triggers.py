"""Change feed of the FHIR projector: triggers on the domain tables that append ``fhir_pending`` rows.

A trigger runs inside the transaction of the change it records, so a committed
change always has its pending row and a rolled-back one never does, whatever
code path made it (handlers, MPPS, C-STORE, A40, the fast store path). The
``UPDATE`` triggers fire only when a column the resources show has changed, so
the receive path pays for an extra row only when a resource really changes.

:func:`install` is idempotent; the engine calls it after migrating, because on
SQLite a migration that rebuilds a table (Alembic batch mode) drops its triggers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection, text

from engine.store.migrate import lock_schema

__all__ = ["SOURCES", "Source", "install", "uninstall"]

Event = Literal["INSERT", "UPDATE", "DELETE"]


@dataclass(frozen=True, slots=True)
class Source:
    """One domain table event that changes resources: pending ``kind`` keyed by ``key_column``.

    ``columns`` (UPDATE only): fire only when one of them changed; empty means any update.
    """

    table: str
    event: Event
    kind: str
    key_column: str
    columns: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The trigger's (and on PostgreSQL its function's) name."""
        return f"fhir_{self.table}_{self.event.lower()}"


_STUDY_COLUMNS = ("patient_pk", "order_pk", "accession_number", "modalities_in_study", "number_of_series",
                  "number_of_instances", "patient_id", "issuer_of_patient_id", "study_date", "study_time",
                  "study_description")
_SERIES_COLUMNS = ("study_pk", "modality", "series_description", "number_of_instances", "series_number",
                   "series_date")

# A new version, a correction or a cancel changes ``version``; attaching to an order ``order_pk``.
_REPORT_COLUMNS = ("order_pk", "patient_pk", "version", "status", "interpreter", "observation_datetime",
                   "conclusion", "text", "issued", "accession_number", "study_instance_uid",
                   "procedure_code_value")

#: Every domain event the resources of the registry depend on.
SOURCES: tuple[Source, ...] = (
    Source("patients", "INSERT", "Patient", "id"),
    Source("patients", "UPDATE", "Patient", "id"),
    Source("patient_other_ids", "INSERT", "Patient", "patient_pk"),
    Source("patient_other_ids", "DELETE", "Patient", "patient_pk"),
    Source("orders", "INSERT", "ServiceRequest", "id"),
    Source("orders", "UPDATE", "ServiceRequest", "id"),
    Source("procedure_steps", "INSERT", "ServiceRequest", "order_pk"),
    Source("procedure_steps", "UPDATE", "ServiceRequest", "order_pk",
           ("status", "modality", "start_datetime", "description")),
    Source("studies", "INSERT", "study", "id"),
    Source("studies", "UPDATE", "study", "id", _STUDY_COLUMNS),
    Source("series", "INSERT", "study", "study_pk"),
    Source("series", "UPDATE", "study", "study_pk", _SERIES_COLUMNS),
    Source("instances", "INSERT", "study", "study_pk"),
    Source("instances", "DELETE", "study", "study_pk"),
    Source("reports", "INSERT", "DiagnosticReport", "id"),
    Source("reports", "UPDATE", "DiagnosticReport", "id", _REPORT_COLUMNS),
)


def _row(source: Source) -> str:
    return "OLD" if source.event == "DELETE" else "NEW"


def _sqlite(source: Source) -> str:
    when = ""
    if source.columns:
        when = "WHEN " + " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in source.columns)
    key = f"CAST({_row(source)}.{source.key_column} AS TEXT)"
    return (f"CREATE TRIGGER IF NOT EXISTS {source.name} AFTER {source.event} ON {source.table} {when} "
            f"BEGIN INSERT INTO fhir_pending (kind, key) VALUES ('{source.kind}', {key}); END")


def _postgresql(source: Source) -> list[str]:
    when = ""
    if source.columns:
        when = "WHEN (" + " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in source.columns) + ")"
    key = f"{_row(source)}.{source.key_column}::text"
    return [
        f"CREATE OR REPLACE FUNCTION {source.name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO fhir_pending (kind, key) VALUES ('{source.kind}', {key}); RETURN NULL; END $$",
        f"DROP TRIGGER IF EXISTS {source.name} ON {source.table}",
        f"CREATE TRIGGER {source.name} AFTER {source.event} ON {source.table} FOR EACH ROW {when} "
        f"EXECUTE FUNCTION {source.name}()",
    ]


def _mark(statements: list[str]) -> str:
    """The comment a PostgreSQL trigger carries: a digest of the statements that made it and its function."""
    return "radbridge " + hashlib.sha256("\n".join(statements).encode()).hexdigest()[:32]


def install(conn: Connection, sources: tuple[Source, ...] = SOURCES) -> None:
    """Create the triggers that are missing (SQLite), or missing or different (PostgreSQL), in ``conn``'s transaction.

    On PostgreSQL under the schema lock: engine processes starting together on one
    database change the triggers one after the other. A trigger that is already as
    it should be (its comment holds the digest of its statements) is left alone:
    replacing it takes an ACCESS EXCLUSIVE lock on its table, which deadlocks with
    a receive worker or another engine that is writing that table and one it read
    before (PostgreSQL then rolls one of them back).
    """
    lock_schema(conn)
    if conn.dialect.name == "sqlite":
        for source in sources:
            conn.execute(text(_sqlite(source)))
        return
    current = {(row.table, row.name): row.mark for row in conn.execute(text(
        "SELECT c.relname AS table, t.tgname AS name, obj_description(t.oid, 'pg_trigger') AS mark"
        " FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE NOT t.tgisinternal AND t.tgname LIKE 'fhir\\_%' AND pg_table_is_visible(c.oid)"))}
    for source in sources:
        statements = _postgresql(source)
        mark = _mark(statements)
        if current.get((source.table, source.name)) == mark:
            continue
        for statement in statements:
            conn.execute(text(statement))
        conn.execute(text(f"COMMENT ON TRIGGER {source.name} ON {source.table} IS '{mark}'"))


def uninstall(conn: Connection, sources: tuple[Source, ...] = SOURCES) -> None:
    """Drop the triggers (and their functions on PostgreSQL)."""
    for source in sources:
        if conn.dialect.name == "sqlite":
            conn.execute(text(f"DROP TRIGGER IF EXISTS {source.name}"))
        else:
            conn.execute(text(f"DROP TRIGGER IF EXISTS {source.name} ON {source.table}"))
            conn.execute(text(f"DROP FUNCTION IF EXISTS {source.name}()"))
