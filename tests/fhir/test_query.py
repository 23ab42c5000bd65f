"""Reading search requests (pure): tokens, dates, references, result parameters, errors."""

from __future__ import annotations

from datetime import UTC
from zoneinfo import ZoneInfo

import pytest

from engine.fhir.instant import dicom_datetime, search_range
from engine.fhir.model import FhirSettings, identifier_system
from engine.fhir.query import MAX_COUNT, DateValue, SearchError, TokenValue, parse

BERLIN = ZoneInfo("Europe/Berlin")


def test_tokens_keep_system_and_code_apart() -> None:
    plan = parse("ImagingStudy", [("identifier", "urn:dicom:uid|urn:oid:1.2,|ACC1,ACC2,sys|")], UTC)
    assert plan.conditions[0].values == (TokenValue("urn:dicom:uid", "urn:oid:1.2"), TokenValue("", "ACC1"),
                                         TokenValue(None, "ACC2"), TokenValue("sys", None))


def test_escaped_commas_stay_in_the_value() -> None:
    plan = parse("Patient", [("name", "a\\,b,c")], UTC)
    assert plan.conditions[0].values == ("a,b", "c")


@pytest.mark.parametrize(("value", "low", "high"), [
    ("2026", "2025-12-31T23:00:00.000000Z", "2026-12-31T23:00:00.000000Z"),
    ("2026-12", "2026-11-30T23:00:00.000000Z", "2026-12-31T23:00:00.000000Z"),
    ("2026-12-05", "2026-12-04T23:00:00.000000Z", "2026-12-05T23:00:00.000000Z"),
    ("2026-12-05T10:15Z", "2026-12-05T10:15:00.000000Z", "2026-12-05T10:16:00.000000Z"),
    ("2026-12-05T10:15:30+02:00", "2026-12-05T08:15:30.000000Z", "2026-12-05T08:15:31.000000Z"),
    ("2026-12-05T10:15:30.5Z", "2026-12-05T10:15:30.500000Z", "2026-12-05T10:15:30.500001Z"),
])  # fmt: skip
def test_a_date_is_the_range_of_its_precision_in_the_site_zone(value: str, low: str, high: str) -> None:
    assert search_range(value, BERLIN) == (low, high)


@pytest.mark.parametrize("value", ["2026-13", "2026-02-30", "26", "2026-12-05T24:00", "2026-12-05 10:00", "", "x"])
def test_impossible_dates_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        search_range(value, UTC)


def test_date_prefixes() -> None:
    plan = parse("ImagingStudy", [("started", "ge2026-01-01"), ("started", "lt2027")], UTC)
    assert [v.prefix for c in plan.conditions for v in c.values if isinstance(v, DateValue)] == ["ge", "lt"]
    with pytest.raises(SearchError):
        parse("ImagingStudy", [("started", "ap2026")], UTC)


def test_references_take_ids_types_and_urls() -> None:
    plan = parse("ImagingStudy", [("patient", "7,Patient/8,http://x/fhir/Patient/9"), ("subject:Patient", "3")], UTC,
                 bases=("http://x/fhir",))
    assert [c.values for c in plan.conditions] == [("Patient/7", "Patient/8", "Patient/9"), ("Patient/3",)]
    for bad in ("Observation/1", "Patient/a b", "Patient/"):
        with pytest.raises(SearchError):
            parse("ImagingStudy", [("patient", bad)], UTC)


def test_an_absolute_reference_matches_only_under_this_servers_base() -> None:
    # R4 3.1.1.4.8: http://other.example/fhir/Patient/9 is Patient/9 of that server; it matched our Patient/9.
    bases = ("https://RIS.example:8443/fhir/",)
    plan = parse("ImagingStudy", [("patient", "http://other.example/fhir/Patient/9"),
                                  ("subject", "https://ris.example:8443/fhir/Patient/9,https://ris.example/fhir/Patient/8"),
                                  ("basedon", "http://ris.example:8443/fhir/ServiceRequest/1")], UTC, bases=bases)
    assert [c.values for c in plan.conditions] == [(), ("Patient/9",), ()]
    assert parse("ImagingStudy", [("patient", "http://x/fhir/Patient/9")], UTC).conditions[0].values == ()
    with pytest.raises(SearchError):  # another server's value is still read as a reference
        parse("ImagingStudy", [("patient", "http://other.example/fhir/Observation/1")], UTC, bases=bases)


def test_count_is_clamped_and_cursor_not_echoed() -> None:
    plan = parse("ImagingStudy", [("_count", "100000"), ("_cursor", "42")], UTC)
    assert (plan.count, plan.cursor, plan.accepted) == (MAX_COUNT, 42, [("_count", "100000")])


def test_unknown_parameters_are_errors_unless_lenient() -> None:
    with pytest.raises(SearchError):
        parse("ImagingStudy", [("reason", "x")], UTC)
    plan = parse("ImagingStudy", [("reason", "x"), ("status", "available")], UTC, lenient=True)
    assert plan.ignored == ["reason"] and len(plan.conditions) == 1


def test_includes_must_be_declared_and_start_from_the_type() -> None:
    plan = parse("ImagingStudy", [("_include", "ImagingStudy:patient")], UTC)
    assert plan.includes == [("ImagingStudy", "patient", "Patient")]
    with pytest.raises(SearchError):
        parse("Patient", [("_include", "ImagingStudy:patient")], UTC)
    assert parse("Patient", [("_revinclude", "ImagingStudy:patient")], UTC).revincludes == [("ImagingStudy", "patient")]
    with pytest.raises(SearchError):
        parse("ServiceRequest", [("_revinclude", "ImagingStudy:patient")], UTC)


def test_dicom_date_and_time_carry_the_site_offset() -> None:
    assert dicom_datetime("20260705", "101530.25", BERLIN) == (
        "2026-07-05T10:15:30+02:00", ("2026-07-05T08:15:30.000000Z", "2026-07-05T08:15:31.000000Z"))
    assert dicom_datetime("20260705", "", BERLIN) == ("2026-07-05", search_range("2026-07-05", BERLIN))
    assert dicom_datetime("2026070", "", BERLIN) is None


def test_identifier_systems() -> None:
    settings = FhirSettings(UTC, identifier_systems={"HOSP": "http://hosp.example/mrn"})
    assert identifier_system(settings, "HOSP", "urn:x") == "http://hosp.example/mrn"
    assert identifier_system(settings, "1.2.840.1", "urn:x") == "urn:oid:1.2.840.1"
    assert identifier_system(settings, "NORTH SIDE", "urn:x") == "urn:x:NORTH_SIDE"
    assert identifier_system(settings, "", "urn:x") == "urn:x"


def test_a_repeated_include_is_run_once() -> None:
    # Each include is one query of its own: 2,000 copies of _include=ImagingStudy:patient (within the 64 KiB
    # request head) ran 2,000 queries for one search.
    pairs = [("_include", "ImagingStudy:patient"), ("_include", "ImagingStudy:patient:Patient"),
             ("_revinclude", "DiagnosticReport:imagingStudy")] * 1000
    plan = parse("ImagingStudy", pairs, UTC)
    assert plan.includes == [("ImagingStudy", "patient", "Patient")]
    assert plan.revincludes == [("DiagnosticReport", "imagingStudy")]
