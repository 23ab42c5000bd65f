"""Raw-encoded response identifiers are byte for byte what pydicom writes for build_response."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from engine.domain.handlers import OrdersHandler
from engine.domain.identifier_encoding import ResponsePlan, fast_codec
from engine.domain.worklist import MatchSettings, build_response, build_select, requested_keys
from engine.store.database import Database

from .factories import apply_records, order, patient


@pytest.fixture(params=["protocol code", "no codes"])
def worklist(request: pytest.FixtureRequest, db: Database, orders_handler: OrdersHandler) -> Database:
    # With codes each code sequence has its item; without, both are empty sequences (no item with an
    # empty CodeValue): the raw encoding must write both shapes as build_response does.
    codes: dict[str, Any] = (
        {"scheduled_protocol_code": {"code_value": "P1", "coding_scheme_designator": "L", "code_meaning": "Plain"}}
        if request.param == "protocol code"
        else {"requested_procedure_code": None}
    )
    apply_records(db, orders_handler, [
        patient("P1", patient_name="Müller^Jürgen"),
        order("PL1", accession_number="A1", study_instance_uid="1.2.31", scheduled_station_ae_title="CT1\\CT22",
              scheduled_start="20261122080000", scheduled_performing_physician_name="House^Greg", **codes),
    ])  # fmt: skip
    return db


def _query() -> Dataset:
    ds = Dataset()
    for key in ("AccessionNumber", "PatientName", "PatientID", "StudyInstanceUID", "PatientComments"):
        setattr(ds, key, "")
    ds.RequestedProcedureCodeSequence = []
    item = Dataset()
    for key in ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                "ScheduledPerformingPhysicianName", "PatientName"):  # fmt: skip
        setattr(item, key, "")
    code = Dataset()
    code.CodeValue = ""
    item.ScheduledProtocolCodeSequence = [code]
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def _row(db: Database, ds: Dataset) -> tuple[list[str], tuple[Any, ...]]:
    def fetch(conn: Any) -> tuple[list[str], tuple[Any, ...]]:
        result = conn.execute(build_select(ds, MatchSettings()))
        return list(result.keys()), tuple(result.one())

    return db.read(fetch)


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_raw_identifier_encodes_like_build_response(
    worklist: Database, implicit: bool, charset: str
) -> None:
    ds = _query()
    columns, row = _row(worklist, ds)
    keys = requested_keys(ds)
    plan = ResponsePlan.compile(keys, columns, implicit)
    codec = fast_codec(charset)
    assert codec is not None
    expected = encode(build_response(dict(zip(columns, row, strict=True)), keys, charset), implicit, True)
    assert encode(plan.encode(row, charset, codec), implicit, True) == expected


def test_raw_identifier_reads_back_as_values(worklist: Database) -> None:
    ds = _query()
    columns, row = _row(worklist, ds)
    rsp = ResponsePlan.compile(requested_keys(ds), columns, False).encode(row, "ISO_IR 100", "latin_1")
    sps = rsp.ScheduledProcedureStepSequence[0]
    assert (str(rsp.PatientName), list(sps.ScheduledStationAETitle)) == ("Müller^Jürgen", ["CT1", "CT22"])


def test_charsets_with_code_extensions_take_the_dataset_path() -> None:
    assert fast_codec("ISO_IR 100") == "latin_1"
    assert fast_codec("") == "iso8859"
    assert fast_codec("ISO 2022 IR 6\\ISO 2022 IR 87") is None
    assert fast_codec("ISO 2022 IR 100") is None


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_identifier_bytes_are_what_pydicom_writes_for_build_response(
    worklist: Database, implicit: bool, charset: str
) -> None:
    ds = _query()
    columns, row = _row(worklist, ds)
    keys = requested_keys(ds)
    codec = fast_codec(charset)
    assert codec is not None
    expected = encode(build_response(dict(zip(columns, row, strict=True)), keys, charset), implicit, True)
    assert ResponsePlan.compile(keys, columns, implicit).encode_bytes(row, charset, codec) == expected


@pytest.mark.parametrize("implicit", [True, False])
def test_whole_item_keys_are_written_in_ascending_tag_order(worklist: Database, implicit: bool) -> None:
    ds = Dataset()
    ds.AccessionNumber = ""
    ds.ScheduledProcedureStepSequence = []  # the whole item, its keys not in tag order
    columns, row = _row(worklist, ds)
    keys = requested_keys(ds)
    expected = encode(build_response(dict(zip(columns, row, strict=True)), keys, "ISO_IR 100"), implicit, True)
    plan = ResponsePlan.compile(keys, columns, implicit)
    assert plan.encode_bytes(row, "ISO_IR 100", "latin_1") == expected
    assert encode(plan.encode(row, "ISO_IR 100", "latin_1"), implicit, True) == expected
