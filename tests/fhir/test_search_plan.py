"""The SQL of a page: keyset paging seeks to its cursor and checks other conditions by index seeks (EXPLAIN)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import pytest
from sqlalchemy import event, insert

from engine.fhir import search
from engine.fhir.query import parse
from engine.fhir.tables import fhir_refs, fhir_resources, fhir_tokens
from engine.store.database import Database

STUDIES = 300


def _seed(db: Database) -> None:
    """STUDIES studies: modality CT for even numbers, MR for odd; patient n % 3 + 1."""
    def write(conn: Any) -> None:
        conn.execute(insert(fhir_resources), [
            {"id": n, "res_type": "ImagingStudy", "res_id": f"s{n}", "version_id": 1,
             "last_updated": "2026-12-06T00:00:00.000000Z", "content_hash": "h", "json": f'{{"id":"s{n}"}}'}
            for n in range(1, STUDIES + 1)])
        conn.execute(insert(fhir_tokens), [
            {"resource_pk": n, "param": "ImagingStudy.modality", "system": "http://dicom.nema.org/resources/ontology/DCM",
             "code": "CT" if n % 2 == 0 else "MR"} for n in range(1, STUDIES + 1)])
        conn.execute(insert(fhir_refs), [{"resource_pk": n, "param": "ImagingStudy.patient",
                                          "target": f"Patient/{n % 3 + 1}"} for n in range(1, STUDIES + 1)])
    db.writer.call(write)


def _explained(db: Database, pairs: list[tuple[str, str]]) -> tuple[search.Page, list[str]]:
    """The page, and the query plan lines of every statement the search ran."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(db.read_engine, "before_cursor_execute", record)
    try:
        page = db.read(lambda c: search.run(c, parse("ImagingStudy", pairs, UTC)))
    finally:
        event.remove(db.read_engine, "before_cursor_execute", record)
    raw = db.read_engine.raw_connection()
    try:
        plans = [" | ".join(str(row[-1]) for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}", params))
                 for sql, params in seen if sql.lstrip().upper().startswith("SELECT")]
    finally:
        raw.close()
    return page, plans


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_token_page_after_a_cursor_seeks_to_it_without_sorting(db: Database) -> None:
    _seed(db)
    page, plans = _explained(db, [("modality", "CT"), ("_count", "10"), ("_cursor", "100")])
    assert [m.pk for m in page.matches] == list(range(102, 122, 2)) and page.total == STUDIES // 2
    assert page.next_cursor == 120
    keyed = [p for p in plans if "resource_pk>?" in p]
    assert len(keyed) == 1 and "TEMP B-TREE FOR DISTINCT" not in keyed[0]
    assert not any("TEMP B-TREE FOR count(DISTINCT)" in p for p in plans)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_second_condition_is_one_index_seek_per_candidate(db: Database) -> None:
    _seed(db)
    page, plans = _explained(db, [("patient", "Patient/2"), ("modality", "CT"), ("_count", "500")])
    assert [m.pk for m in page.matches] == [n for n in range(1, STUDIES + 1) if n % 3 == 1 and n % 2 == 0]
    assert all("CORRELATED" in p and "resource_pk=?" in p for p in plans)
    assert not any("LIST SUBQUERY" in p or "USING EPHEMERAL" in p for p in plans)


@pytest.mark.parametrize("pairs", [
    [("identifier", ",".join(f"urn:x|A{n}" for n in range(499)) + ",http://dicom.nema.org/resources/ontology/DCM|CT")],
    [("modality", "CT")] * 16,
    [("modality", "CT," + ",".join(f"X{n}" for n in range(30)))] * 16,
    [("started", ",".join(f"ge20{n % 100:02d}" for n in range(500)))],
], ids=["one-parameter", "anded", "anded-ored", "dates"])  # fmt: skip
def test_the_largest_searches_allowed_run_on_both_backends(db: Database, pairs: list[tuple[str, str]]) -> None:
    # query.MAX_VALUES, MAX_CONDITIONS: past about a thousand values SQLite refused the statement, and 500 ANDed
    # parameters kept PostgreSQL planning for more than a minute. What the limits allow must run everywhere.
    _seed(db)
    page = db.read(lambda c: search.run(c, parse("ImagingStudy", pairs, UTC)))
    assert page.total == (0 if pairs[0][0] in ("identifier", "started") else STUDIES // 2)


def test_a_reference_to_another_server_matches_nothing_on_both_backends(db: Database) -> None:
    # R4 3.1.1.4.8: an absolute reference outside this server's base names another server's resource; it matched
    # the local Patient/2. A condition left without values is false in SQL on both backends (an empty IN).
    _seed(db)
    bases = ("http://ris.example/fhir",)

    def total(value: str) -> int:
        return db.read(lambda c: search.run(c, parse("ImagingStudy", [("patient", value)], UTC, bases=bases))).total

    assert total("http://ris.example/fhir/Patient/2") == STUDIES // 3
    assert total("http://other.example/fhir/Patient/2") == 0
    assert total("http://other.example/fhir/Patient/2,Patient/3") == STUDIES // 3


def test_a_page_stops_at_its_size_limit_and_the_next_pages_give_every_match_on_both_backends(db: Database) -> None:
    # fhirfix6: a page held _count matches whatever their size (50 reports of 5 MB: one 250 MB response). Each
    # stored study here is 10-12 characters of JSON; at most 25 characters a page is two matches (one when the
    # first alone is larger), and the pages after it still give every match once, in order.
    _seed(db)
    pairs = [("modality", "CT"), ("_count", "10")]
    seen: list[str] = []
    cursor, pages = 0, 0
    while True:
        plan = parse("ImagingStudy", [*pairs, ("_cursor", str(cursor))] if cursor else pairs, UTC)
        page = db.read(lambda c, plan=plan: search.run(c, plan, max_chars=25))
        assert page.total == STUDIES // 2 and 1 <= len(page.matches) <= 2
        assert sum(len(m.json) for m in page.matches) <= 25 or len(page.matches) == 1
        seen += [m.res_id for m in page.matches]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"s{n}" for n in range(2, STUDIES + 1, 2)]
    one = db.read(lambda c: search.run(c, parse("ImagingStudy", pairs, UTC), max_chars=1))
    assert len(one.matches) == 1 and one.next_cursor == one.matches[0].pk  # one match larger than the limit: alone
    whole = db.read(lambda c: search.run(c, parse("ImagingStudy", pairs, UTC)))
    assert len(whole.matches) == 10  # the default limit leaves small resources to _count


def test_a_history_page_stops_at_its_size_limit_and_the_next_pages_give_every_version_on_both_backends(
        db: Database) -> None:
    # fhirfix6: a type-level _history page held _count versions whatever their size (500 versions of 5 MB reports:
    # 2.5 GB in one response). 30 resources of 3 versions each, 20 characters of JSON a version, 50 a page.
    from engine.fhir.history import history_page
    from engine.fhir.tables import fhir_versions

    def write(conn: Any) -> None:
        conn.execute(insert(fhir_resources), [
            {"id": n, "res_type": "Patient", "res_id": f"p{n}", "version_id": 3,
             "last_updated": f"2026-12-06T00:00:{n:02d}.000003Z", "content_hash": "h", "json": "{}"}
            for n in range(1, 31)])
        conn.execute(insert(fhir_versions), [
            {"resource_pk": n, "version_id": k, "last_updated": f"2026-12-06T00:00:{n:02d}.00000{k}Z",
             "json": f'{{"id":"p{n:02d}","v":"{k}"}}'[:20].ljust(20)} for n in range(1, 31) for k in (1, 2, 3)])
    db.writer.call(write)
    seen: list[tuple[str, int]] = []
    cursor = None
    while True:
        page = db.read(lambda c, after=cursor: history_page(c, "Patient", 10, None, after, max_chars=50))
        assert 1 <= len(page.versions) <= 2 and sum(len(s.json) for s in page.versions) <= 50
        seen += [(s.res_id, s.version_id) for s in page.versions]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [(f"p{n}", k) for n in range(30, 0, -1) for k in (3, 2, 1)]
    whole = db.read(lambda c: history_page(c, "Patient", 10))
    assert len(whole.versions) == 10 and whole.next_cursor is not None
