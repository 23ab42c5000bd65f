"""Annex K matching, one behaviour per test, against a small SQLite worklist."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from engine.domain.handlers import OrdersHandler
from engine.domain.worklist import (
    InvalidQuery,
    MatchSettings,
    build_response,
    build_select,
    parse_range,
    requested_keys,
    response_charset,
    unsupported_keys,
    wildcard_to_glob,
    wildcard_to_like,
)
from engine.store.database import Database

from .factories import apply_records, order, patient

ENTRIES = [
    order("PL1", accession_number="A1", study_instance_uid="1.2.1", scheduled_station_ae_title="CT1",
          scheduled_start="20261122080000", scheduled_performing_physician_name="House^Greg"),
    order("PL2", accession_number="A2", study_instance_uid="1.2.2", scheduled_station_ae_title="CT1\\CT2",
          scheduled_start="20261122235900"),
    order("PL3", accession_number="A3", study_instance_uid="1.2.3", modality="MR", scheduled_station_ae_title="MR1",
          scheduled_start="20261123000100", patient_id="P2"),
    order("PL4", accession_number="A4", study_instance_uid="1.2.4", scheduled_station_ae_title="CT_2",
          scheduled_start="20261124120000", patient_id="P3"),
]  # fmt: skip


@pytest.fixture
def worklist(db: Database, orders_handler: OrdersHandler) -> Database:
    apply_records(db, orders_handler, [
        patient("P1", patient_name="Doe^Jane"), *ENTRIES[:2],
        patient("P2", patient_name="Müller^Jürgen"), ENTRIES[2],
        patient("P3", patient_name=""), ENTRIES[3],
    ])  # fmt: skip
    return db


def _query(top: dict[str, Any] | None = None, sps: dict[str, Any] | None = None) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = ""
    for key, value in (top or {}).items():
        setattr(ds, key, value)
    if sps is not None:
        item = Dataset()
        for key, value in sps.items():
            setattr(item, key, value)
        ds.ScheduledProcedureStepSequence = [item]
    return ds


def _match(db: Database, ds: Dataset, **settings: Any) -> list[str]:
    rows = db.read(
        lambda c: c.execute(build_select(ds, MatchSettings(**settings))).mappings().all()
    )
    return sorted(r["AccessionNumber"] for r in rows)


def test_universal_query_returns_every_visible_step(worklist: Database) -> None:
    assert _match(worklist, _query()) == ["A1", "A2", "A3", "A4"]


def test_single_value_matching_is_exact(worklist: Database) -> None:
    assert _match(worklist, _query({"PatientID": "P2"})) == ["A3"]


def test_star_alone_is_universal_and_matches_empty_values(worklist: Database) -> None:
    assert _match(worklist, _query({"PatientName": "*"})) == ["A1", "A2", "A3", "A4"]


def test_empty_value_never_matches_a_non_universal_key(worklist: Database) -> None:
    assert _match(worklist, _query({"PatientName": "?*"})) == ["A1", "A2", "A3"]


def test_person_names_match_case_insensitively_by_default(worklist: Database) -> None:
    assert _match(worklist, _query({"PatientName": "DOE^*"})) == ["A1", "A2"]


def test_person_name_case_sensitivity_is_a_setting(worklist: Database) -> None:
    assert _match(worklist, _query({"PatientName": "DOE^*"}), case_sensitive_names=True) == []
    assert _match(worklist, _query({"PatientName": "Doe^*"}), case_sensitive_names=True) == [
        "A1",
        "A2",
    ]


def test_question_mark_matches_exactly_one_character(worklist: Database) -> None:
    assert _match(worklist, _query({"AccessionNumber": "A?"})) == ["A1", "A2", "A3", "A4"]
    assert _match(worklist, _query({"AccessionNumber": "A??"})) == []


def test_sql_wildcards_in_values_are_literal(worklist: Database) -> None:
    assert _match(worklist, _query(sps={"ScheduledStationAETitle": "CT_*"})) == ["A4"]


def test_non_ascii_names_match(worklist: Database) -> None:
    assert _match(worklist, _query({"PatientName": "Müller*"})) == ["A3"]


def test_multi_valued_station_ae_title_matches_any_value(worklist: Database) -> None:
    assert _match(worklist, _query(sps={"ScheduledStationAETitle": "CT2"})) == ["A2"]


def test_station_ae_wildcard_matches_each_value(worklist: Database) -> None:
    assert _match(worklist, _query(sps={"ScheduledStationAETitle": "CT?"})) == ["A1", "A2"]


def test_uid_list_matches_any_listed_uid(worklist: Database) -> None:
    assert _match(worklist, _query({"StudyInstanceUID": ["1.2.1", "1.2.3"]})) == ["A1", "A3"]


@pytest.mark.parametrize(
    ("date", "expected"),
    [("20261122", ["A1", "A2"]), ("20261123-", ["A3", "A4"]), ("-20261123", ["A1", "A2", "A3"]),
     ("20261123-20261123", ["A3"])],
)  # fmt: skip
def test_date_single_and_ranges(worklist: Database, date: str, expected: list[str]) -> None:
    assert _match(worklist, _query(sps={"ScheduledProcedureStepStartDate": date})) == expected


def test_time_range_alone(worklist: Database) -> None:
    assert _match(worklist, _query(sps={"ScheduledProcedureStepStartTime": "0700-1300"})) == [
        "A1",
        "A4",
    ]


def test_date_and_time_ranges_combine_into_one_datetime_range(worklist: Database) -> None:
    sps = {
        "ScheduledProcedureStepStartDate": "20261122-20261123",
        "ScheduledProcedureStepStartTime": "2300-0100",
    }
    assert _match(worklist, _query(sps=sps)) == ["A2", "A3"]


def test_sequence_matching_combines_sps_keys(worklist: Database) -> None:
    assert _match(worklist, _query(sps={"Modality": "CT", "ScheduledStationAETitle": "CT1"})) == [
        "A1",
        "A2",
    ]


def test_pn_inside_sps_is_case_insensitive(worklist: Database) -> None:
    assert _match(worklist, _query(sps={"ScheduledPerformingPhysicianName": "HOUSE*"})) == ["A1"]


def test_hidden_statuses_are_not_returned(
    worklist: Database, orders_handler: OrdersHandler
) -> None:
    apply_records(
        worklist, orders_handler, [{**ENTRIES[0], "order_control": "CA", "order_status": "CA"}]
    )
    assert _match(worklist, _query()) == ["A2", "A3", "A4"]
    assert _match(worklist, _query(), hidden_statuses=()) == ["A1", "A2", "A3", "A4"]


def test_match_cap_limits_rows_to_cap_plus_one(worklist: Database) -> None:
    assert len(_match(worklist, _query(), max_matches=1)) == 2


def test_bad_date_is_an_invalid_query() -> None:
    with pytest.raises(InvalidQuery):
        build_select(
            _query(sps={"ScheduledProcedureStepStartDate": "2026-11-22-1"}), MatchSettings()
        )
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in "20261122")  # U+FF10..FF19; DA is ASCII digits
    for other_digits in (fullwidth, "20261122-" + fullwidth):
        with pytest.raises(InvalidQuery):
            build_select(_query(sps={"ScheduledProcedureStepStartDate": other_digits}), MatchSettings())


@pytest.mark.parametrize(
    ("value", "expected"),
    [("D", ("D", "D")), ("A-B", ("A", "B")), ("-B", (None, "B")), ("A-", ("A", None))],
)
def test_parse_range(value: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_range(value) == expected


def test_wildcard_translation() -> None:
    assert wildcard_to_like("A*_%?\\") == "A%\\_\\%_\\\\"
    assert wildcard_to_glob("A[1]*") == "A[[]1[]]*"


def test_response_has_exactly_the_requested_keys(worklist: Database) -> None:
    ds = _query(
        {"PatientID": "P2", "PatientName": ""}, sps={"Modality": "", "ScheduledStationAETitle": ""}
    )
    rows = worklist.read(lambda c: c.execute(build_select(ds, MatchSettings())).mappings().all())
    rsp = build_response(rows[0], requested_keys(ds), "ISO_IR 192")
    assert [e.keyword for e in rsp] == ["SpecificCharacterSet", "AccessionNumber", "PatientName", "PatientID",
                                        "ScheduledProcedureStepSequence"]  # fmt: skip
    assert [e.keyword for e in rsp.ScheduledProcedureStepSequence[0]] == [
        "Modality",
        "ScheduledStationAETitle",
    ]
    assert (str(rsp.PatientName), rsp.ScheduledProcedureStepSequence[0].Modality) == (
        "Müller^Jürgen",
        "MR",
    )


def test_empty_sequence_key_returns_the_whole_item(worklist: Database) -> None:
    ds = _query({"PatientID": "P1", "RequestedProcedureCodeSequence": []})
    rows = worklist.read(lambda c: c.execute(build_select(ds, MatchSettings())).mappings().all())
    rsp = build_response(rows[0], requested_keys(ds), "ISO_IR 192")
    assert rsp.RequestedProcedureCodeSequence[0].CodeValue == "CTHEAD"


def test_a_name_in_one_group_matches_a_stored_name_with_ideographic_and_phonetic_groups(
    db: Database, orders_handler: OrdersHandler
) -> None:
    apply_records(db, orders_handler, [
        patient("P8", patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう"),
        order("PL8", patient_id="P8", accession_number="A8"),
    ])  # fmt: skip
    for key, found in [("Yamada^Tarou", ["A8"]), ("YAMADA^TAROU", ["A8"]), ("Yamada*", ["A8"]),
                       ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["A8"]), ("Yamada", []), ("Yamada^Taro", []),
                       ("Yamada^Tarou=*", ["A8"])]:  # fmt: skip
        assert _match(db, _query({"PatientName": key})) == found, key
    assert _match(db, _query({"PatientName": "Yamada^Tarou"}), case_sensitive_names=True) == ["A8"]
    assert _match(db, _query({"PatientName": "YAMADA^TAROU"}), case_sensitive_names=True) == []


def test_an_order_without_codes_gets_empty_code_sequences_not_items_with_empty_code_values(
    db: Database, orders_handler: OrdersHandler
) -> None:
    # An OBR-4 without a code (and no IPC-6 protocol): an item would need CodeValue and
    # CodingSchemeDesignator (type 1, PS3.3 8.8); the type 2 return key is answered empty instead.
    apply_records(db, orders_handler, [
        patient("P9", patient_name="Doe^Jo"),
        order("PL9", patient_id="P9", accession_number="A9", requested_procedure_code=None),
    ])  # fmt: skip
    ds = _query({"PatientID": "P9", "RequestedProcedureCodeSequence": []},
                sps={"ScheduledProtocolCodeSequence": [], "Modality": ""})  # fmt: skip
    rows = db.read(lambda c: c.execute(build_select(ds, MatchSettings())).mappings().all())
    rsp = build_response(rows[0], requested_keys(ds), "ISO_IR 192")
    assert "RequestedProcedureCodeSequence" in rsp and len(rsp.RequestedProcedureCodeSequence) == 0
    step = rsp.ScheduledProcedureStepSequence[0]
    assert "ScheduledProtocolCodeSequence" in step and len(step.ScheduledProtocolCodeSequence) == 0
    assert step.Modality == "CT"


def test_multi_valued_ae_title_is_returned_as_two_values(worklist: Database) -> None:
    ds = _query({"AccessionNumber": "A2"}, sps={"ScheduledStationAETitle": ""})
    rows = worklist.read(lambda c: c.execute(build_select(ds, MatchSettings())).mappings().all())
    rsp = build_response(rows[0], requested_keys(ds), "ISO_IR 192")
    assert list(rsp.ScheduledProcedureStepSequence[0].ScheduledStationAETitle) == ["CT1", "CT2"]


def test_unknown_keys_are_reported_as_unsupported() -> None:
    ds = _query({"PatientComments": ""})
    assert unsupported_keys(requested_keys(ds)) == ["PatientComments"]


def test_charset_falls_back_to_utf8_when_the_site_charset_cannot_encode() -> None:
    assert response_charset({"n": "Müller"}, "ISO_IR 100") == "ISO_IR 100"
    assert response_charset({"n": "Дмитрий"}, "ISO_IR 100") == "ISO_IR 192"


def test_date_range_alone_walks_the_start_datetime_index(worklist: Database) -> None:
    stmt = build_select(_query(sps={"ScheduledProcedureStepStartDate": "20261122-20261123"}), MatchSettings())
    sql = str(stmt.compile(compile_kwargs={"literal_binds": True}))
    plan = worklist.read(lambda c: [r[3] for r in c.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)])
    assert any(p.startswith("SEARCH") and "start_datetime>" in p for p in plan), plan


def test_station_and_date_follow_a_rescheduled_step(
    worklist: Database, orders_handler: OrdersHandler
) -> None:
    moved = {**ENTRIES[1], "order_control": "XO", "scheduled_start": "20261125101500"}
    apply_records(worklist, orders_handler, [moved])
    station = {"ScheduledStationAETitle": "CT2"}
    assert _match(worklist, _query(sps={**station, "ScheduledProcedureStepStartDate": "20261122"})) == []
    assert _match(worklist, _query(sps={**station, "ScheduledProcedureStepStartDate": "20261125"})) == ["A2"]
    both = {**station, "ScheduledProcedureStepStartDate": "20261125", "ScheduledProcedureStepStartTime": "1000-1030"}
    assert _match(worklist, _query(sps=both)) == ["A2"]


def test_station_and_date_walk_one_index_range(worklist: Database) -> None:
    query = _query(sps={"ScheduledStationAETitle": "CT1", "ScheduledProcedureStepStartDate": "20261122"})
    sql = str(build_select(query, MatchSettings()).compile(compile_kwargs={"literal_binds": True}))
    plan = worklist.read(lambda c: [r[3] for r in c.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)])
    assert any("ae_title=? AND start_datetime>" in p for p in plan), plan


def test_a_kanji_value_does_not_fit_an_iso_ir_13_worklist_and_half_width_katakana_does() -> None:
    """pydicom encodes ISO_IR 13 (JIS X 0201, one byte a character) with shift_jis, which also writes kanji in
    two bytes: a response declared ISO_IR 13 carried bytes no JIS X 0201 reader can show."""
    assert response_charset({"n": "山田^太郎"}, "ISO_IR 13") == "ISO_IR 192"
    assert response_charset({"n": "ﾔﾏﾀﾞ^ﾀﾛｳ"}, "ISO_IR 13") == "ISO_IR 13"
    assert response_charset({"n": "Ελένη"}, "ISO_IR 126") == "ISO_IR 126"
