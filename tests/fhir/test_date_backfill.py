"""Migration 0025: search-index dates written unpadded before the fix (years before 1000) are padded, on both
backends, so they compare as dates."""

from __future__ import annotations

from datetime import UTC

from alembic import command
from sqlalchemy import insert, select

from engine.fhir import search
from engine.fhir.query import parse
from engine.fhir.tables import fhir_dates, fhir_resources
from engine.store.database import Database
from engine.store.migrate import alembic_config, upgrade

#: As the projector wrote them before fbb7cf0: strftime("%Y") left years before 1000 unpadded.
OLD_ROWS = [
    (1, "Patient.birthdate", "999-01-01T00:00:00.000000Z", "999-01-02T00:00:00.000000Z"),  # born 0999-01-01 (UTC)
    (2, "Patient.birthdate", "1980-02-02T00:00:00.000000Z", "1980-02-03T00:00:00.000000Z"),
    (3, "Patient.birthdate", "50-06-01T00:00:00.000000Z", "50-06-02T00:00:00.000000Z"),  # year 50
    (4, "Patient.birthdate", "999-12-31T00:00:00.000000Z", "1000-01-01T00:00:00.000000Z"),  # only low was short
]


def _born(db: Database, value: str) -> list[str]:
    page = db.read(lambda c: search.run(c, parse("Patient", [("birthdate", value)], UTC)))
    return [m.res_id for m in page.matches]


def test_unpadded_dates_from_before_the_fix_are_padded_by_the_migration(db: Database) -> None:
    with db.write_engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0024")
        conn.execute(insert(fhir_resources), [
            {"id": pk, "res_type": "Patient", "res_id": f"p{pk}", "version_id": 1,
             "last_updated": "2026-12-06T00:00:00.000000Z", "content_hash": "h", "json": "{}"} for pk, *_ in OLD_ROWS])
        conn.execute(insert(fhir_dates), [{"resource_pk": pk, "param": p, "low": lo, "high": hi}
                                          for pk, p, lo, hi in OLD_ROWS])
    # The old rows compare as text, wrongly: year 999 sorts after 1980, year 50 after both.
    assert _born(db, "ge1980") == ["p1", "p2", "p3"]
    assert _born(db, "lt1000") == []
    upgrade(db.write_engine)
    rows = db.read(lambda c: c.execute(select(fhir_dates.c.resource_pk, fhir_dates.c.low, fhir_dates.c.high)
                                       .order_by(fhir_dates.c.resource_pk)).all())
    assert [tuple(r) for r in rows] == [
        (1, "0999-01-01T00:00:00.000000Z", "0999-01-02T00:00:00.000000Z"),
        (2, "1980-02-02T00:00:00.000000Z", "1980-02-03T00:00:00.000000Z"),
        (3, "0050-06-01T00:00:00.000000Z", "0050-06-02T00:00:00.000000Z"),
        (4, "0999-12-31T00:00:00.000000Z", "1000-01-01T00:00:00.000000Z")]
    assert _born(db, "ge1980") == ["p2"]
    assert _born(db, "lt1000") == ["p1", "p3", "p4"]
    assert _born(db, "0999") == ["p1", "p4"] and _born(db, "0050-06-01") == ["p3"]
