"""Coercion of a header to its order's values: pure code over pydicom datasets."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from engine.archive.structure import Encoding
from engine.mapping.null import NULL
from engine.reconcile.charset import UTF8, fits, needed_charset
from engine.reconcile.coerce import Modification, coerce
from engine.reconcile.keys import MatchKeys
from engine.reconcile.rewrite import encode_header

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
MOD = Modification(NOW, "RADBRIDGE", "CT1")


def header(**values: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = "SMITH^J"
    ds.PatientID = "P1"
    ds.AccessionNumber = "A1"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_a_changed_value_is_written_and_its_previous_value_recorded() -> None:
    ds = header()
    assert coerce(ds, {"PatientName": "SMITH^JOHN", "PatientID": "P1"}, MOD) == ("PatientName",)
    assert str(ds.PatientName) == "SMITH^JOHN"
    (item,) = ds.OriginalAttributesSequence
    assert str(item.ModifiedAttributesSequence[0].PatientName) == "SMITH^J"
    assert "PatientID" not in item.ModifiedAttributesSequence[0]
    assert (item.ReasonForTheAttributeModification, item.ModifyingSystem, item.SourceOfPreviousValues) == (
        "COERCE", "RADBRIDGE", "CT1")
    assert item.AttributeModificationDateTime.startswith("20261205120000")


def test_nothing_differs_nothing_changes() -> None:
    ds = header()
    assert coerce(ds, {"PatientName": "SMITH^J", "AccessionNumber": "A1"}, MOD) == ()
    assert "OriginalAttributesSequence" not in ds


def test_an_empty_mapped_value_keeps_the_modality_value() -> None:
    ds = header(PatientBirthDate="19700101")
    assert coerce(ds, {"PatientBirthDate": "", "IssuerOfAccessionNumberSequence": []}, MOD) == ()
    assert ds.PatientBirthDate == "19700101"


def test_a_null_mapped_value_empties_the_header_value_and_records_it() -> None:
    ds = header(PatientBirthDate="19700101")
    assert coerce(ds, {"PatientBirthDate": NULL, "PatientName": "SMITH^J"}, MOD) == ("PatientBirthDate",)
    assert "PatientBirthDate" in ds and ds.PatientBirthDate == ""
    assert ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientBirthDate == "19700101"


def test_a_null_mapped_value_adds_no_attribute_and_leaves_an_empty_one_alone() -> None:
    ds = header(PatientSex="")
    assert coerce(ds, {"PatientBirthDate": NULL, "PatientSex": NULL}, MOD) == ()
    assert "PatientBirthDate" not in ds and "OriginalAttributesSequence" not in ds


def test_an_added_attribute_is_recorded_as_absent_with_an_empty_value() -> None:
    ds = header()
    assert coerce(ds, {"StudyDescription": "CT HEAD"}, MOD) == ("StudyDescription",)
    modified = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert "StudyDescription" in modified and modified.StudyDescription in (None, "")


def test_earlier_items_are_kept_and_the_new_one_appended() -> None:
    ds = header()
    coerce(ds, {"PatientName": "SMITH^JOHN"}, MOD)
    coerce(ds, {"PatientName": "SMITH^JOHN^Q"}, Modification(NOW, "RADBRIDGE", "", "CORRECT"))
    first, second = ds.OriginalAttributesSequence
    assert str(first.ModifiedAttributesSequence[0].PatientName) == "SMITH^J"
    assert str(second.ModifiedAttributesSequence[0].PatientName) == "SMITH^JOHN"
    assert second.ReasonForTheAttributeModification == "CORRECT"


def test_a_sequence_item_is_merged_keeping_the_modality_attributes() -> None:
    ds = header()
    item = Dataset()
    item.ScheduledProcedureStepID = "OLD"
    item.ScheduledProcedureStepDescription = "by the modality"
    ds.RequestAttributesSequence = [item]
    wanted = {"RequestAttributesSequence": [{"ScheduledProcedureStepID": "SPS1", "AccessionNumber": "A1",
                                             "RequestedProcedureCodeSequence": []}]}
    assert coerce(ds, wanted, MOD) == ("RequestAttributesSequence",)
    (new,) = ds.RequestAttributesSequence
    assert (new.ScheduledProcedureStepID, new.AccessionNumber) == ("SPS1", "A1")
    assert new.ScheduledProcedureStepDescription == "by the modality"
    assert "RequestedProcedureCodeSequence" not in new
    old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].RequestAttributesSequence[0]
    assert old.ScheduledProcedureStepID == "OLD"


def test_a_non_ascii_name_in_an_ascii_header_switches_to_utf8_and_is_encoded_so() -> None:
    ds = header()
    coerce(ds, {"PatientName": "Åström^Jöns"}, MOD)
    assert ds.SpecificCharacterSet == UTF8
    assert "SpecificCharacterSet" in ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    out = dcmread(BytesIO(encode_header(ds, Encoding(False, True))), force=True)
    assert "Åström^Jöns".encode() in encode_header(ds, Encoding(False, True))
    assert str(out.PatientName) == "Åström^Jöns"


def test_a_latin1_header_keeps_its_charset_for_a_latin1_name() -> None:
    ds = header(SpecificCharacterSet="ISO_IR 100")
    coerce(ds, {"PatientName": "Buc^Jérôme"}, MOD)
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert "Buc^Jérôme".encode("latin-1") in encode_header(ds, Encoding(False, True))


def test_existing_text_is_reencoded_when_the_charset_changes(corpus: Path) -> None:
    src = corpus / "dicom" / "charset" / "chrH31_ISO2022_IR87_japanese.dcm"
    ds = dcmread(src, stop_before_pixels=True)
    ds.StudyDescription = "検査"
    name = str(ds.PatientName)
    coerce(ds, {"ReferringPhysicianName": "Åström^Jöns"}, MOD)
    out = dcmread(BytesIO(encode_header(ds, Encoding(False, True))), force=True)
    assert out.SpecificCharacterSet == UTF8
    assert str(out.ReferringPhysicianName) == "Åström^Jöns"
    assert (str(out.PatientName), out.StudyDescription) == (name, "検査")
    assert "SpecificCharacterSet" in out.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]


@pytest.mark.parametrize(("text", "charset", "ok"), [
    ("SMITH", None, True), ("Jöns", None, False), ("Jöns", "ISO_IR 100", True), ("Jöns", "ISO_IR 192", True),
    ("Люк", "ISO_IR 100", False), ("Люк", "ISO_IR 144", True), ("Jöns", ["", "ISO 2022 IR 87"], False),
    ("Jöns", "NOT A CHARSET", False),
    ("ﾔﾏﾀﾞ^ﾀﾛｳ", "ISO_IR 13", True), ("山田^太郎", "ISO_IR 13", False), ("王^小东", "GB18030", True),
    ("王^小东", "GBK", True),
])
def test_fits(text: str, charset: object, ok: bool) -> None:
    assert fits(text, charset) is ok


def test_a_kanji_name_in_a_jis_x_0201_header_switches_to_utf8() -> None:
    """ISO_IR 13 is JIS X 0201, one byte a character (romaji and half-width katakana). Kanji were taken to
    fit it (pydicom names Python's shift_jis codec for it, which encodes kanji in two bytes): the header
    kept ISO_IR 13 and pydicom wrote the name as '??^??'."""
    ds = header(SpecificCharacterSet="ISO_IR 13", PatientName="ﾔﾏﾀﾞ^ﾀﾛｳ")
    coerce(ds, {"PatientName": "山田^太郎"}, MOD)
    assert ds.SpecificCharacterSet == UTF8
    raw = encode_header(ds, Encoding(False, True))
    assert "山田^太郎".encode() in raw
    out = dcmread(BytesIO(raw), force=True)
    assert str(out.PatientName) == "山田^太郎"
    assert str(out.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientName) == "ﾔﾏﾀﾞ^ﾀﾛｳ"


def test_needed_charset_keeps_the_current_one_when_everything_fits() -> None:
    assert needed_charset("ISO_IR 100", ["Jérôme", "ABC"]) == "ISO_IR 100"
    assert needed_charset("ISO_IR 100", ["Люк"]) == UTF8


def test_match_keys_read_sps_ids_and_identity() -> None:
    ds = header(StudyInstanceUID="1.2.3", IssuerOfPatientID="HOSP")
    items = []
    for sps in ("S1", "S2", "S1", ""):
        item = Dataset()
        item.ScheduledProcedureStepID = sps
        items.append(item)
    ds.RequestAttributesSequence = items
    assert MatchKeys.from_dataset(ds) == MatchKeys(("S1", "S2"), "1.2.3", "A1", "P1", "HOSP")


def test_the_target_is_only_read_so_one_mapping_output_serves_every_image_of_the_order() -> None:
    target = {"PatientName": "SMITH^JOHN", "RequestAttributesSequence": {"ScheduledProcedureStepID": "S1",
              "RequestedProcedureCodeSequence": [{"CodeValue": "C", "CodingSchemeDesignator": "L"}]}}
    before = copy.deepcopy(target)
    for _ in range(2):
        ds = header()
        assert coerce(ds, target, MOD) == ("PatientName", "RequestAttributesSequence")
        ds.RequestAttributesSequence[0].ScheduledProcedureStepID = "CHANGED AFTERWARDS"
    assert target == before


def _request_item(rp: str, sps: str, accession: str, description: str = "") -> Dataset:
    item = Dataset()
    item.RequestedProcedureID, item.ScheduledProcedureStepID, item.AccessionNumber = rp, sps, accession
    if description:
        item.ScheduledProcedureStepDescription = description
    return item


def _group_case() -> Dataset:
    """An image acquired for three requested procedures (IHE RAD TF-2 4.8.4.1.3.2, the group case)."""
    ds = header()
    ds.RequestAttributesSequence = [_request_item("RP-A", "SPS-A", "ACC-A", "CT CHEST"),
                                    _request_item("RP-B", "SPS-B", "ACC-B", "CT ABDOMEN"),
                                    _request_item("RP-C", "SPS-C", "ACC-C")]
    return ds


@pytest.mark.parametrize("wanted", [
    {"RequestedProcedureID": "RP-B", "ScheduledProcedureStepID": "SPS-B", "AccessionNumber": "ACC-B",
     "RequestedProcedureDescription": "CT ABDOMEN W"},
    {"RequestedProcedureID": "RP-B", "ScheduledProcedureStepID": "", "AccessionNumber": "ACC-B",
     "RequestedProcedureDescription": "CT ABDOMEN W"},
], ids=["by step", "by requested procedure and accession"])
def test_the_matched_item_of_a_group_case_is_coerced_and_the_other_requested_procedures_stay(
        wanted: dict[str, str]) -> None:
    """The mapping's one item was merged into the header's first item and the others dropped: the image lost
    two of the three procedures it was acquired for, and the one kept mixed order A's step description with
    order B's ids."""
    ds = _group_case()
    assert coerce(ds, {"RequestAttributesSequence": [wanted]}, MOD) == ("RequestAttributesSequence",)
    a, b, c = ds.RequestAttributesSequence
    assert (a.ScheduledProcedureStepID, a.AccessionNumber, a.ScheduledProcedureStepDescription) == (
        "SPS-A", "ACC-A", "CT CHEST")
    assert "RequestedProcedureDescription" not in a
    assert (b.ScheduledProcedureStepID, b.RequestedProcedureDescription, b.ScheduledProcedureStepDescription) == (
        "SPS-B", "CT ABDOMEN W", "CT ABDOMEN")
    assert (c.ScheduledProcedureStepID, c.AccessionNumber) == ("SPS-C", "ACC-C")
    old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].RequestAttributesSequence
    assert [i.ScheduledProcedureStepID for i in old] == ["SPS-A", "SPS-B", "SPS-C"]
    assert coerce(ds, {"RequestAttributesSequence": [wanted]}, MOD) == ()  # coerced already: nothing changes


def test_an_order_no_item_of_a_group_case_names_gets_an_item_of_its_own_and_the_others_stay() -> None:
    """The order's ids were merged into the first item, another requested procedure's: that item then said
    SPS-X beside procedure A's step description (CT CHEST), and procedure A was gone from the image. Now the
    received items stay as they are and the order's item is appended (IHE RAD TF-2 4.8.4.1.3.2: one item per
    requested procedure the image was acquired for)."""
    ds = _group_case()
    wanted = {"RequestedProcedureID": "RP-X", "ScheduledProcedureStepID": "SPS-X", "AccessionNumber": "ACC-X",
              "RequestedProcedureDescription": "CT SPINE"}
    assert coerce(ds, {"RequestAttributesSequence": [wanted]}, MOD) == ("RequestAttributesSequence",)
    a, b, c, x = ds.RequestAttributesSequence
    assert [(i.RequestedProcedureID, i.ScheduledProcedureStepID, i.AccessionNumber) for i in (a, b, c)] == [
        ("RP-A", "SPS-A", "ACC-A"), ("RP-B", "SPS-B", "ACC-B"), ("RP-C", "SPS-C", "ACC-C")]
    assert a.ScheduledProcedureStepDescription == "CT CHEST" and "RequestedProcedureDescription" not in a
    assert (x.RequestedProcedureID, x.ScheduledProcedureStepID, x.AccessionNumber,
            x.RequestedProcedureDescription) == ("RP-X", "SPS-X", "ACC-X", "CT SPINE")
    assert "ScheduledProcedureStepDescription" not in x
    old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].RequestAttributesSequence
    assert [i.ScheduledProcedureStepID for i in old] == ["SPS-A", "SPS-B", "SPS-C"]
    assert coerce(ds, {"RequestAttributesSequence": [wanted]}, MOD) == ()  # a resend: the appended item is found


def test_an_item_of_a_group_case_that_names_no_other_procedure_takes_the_orders_values() -> None:
    ds = _group_case()
    anonymous = Dataset()
    anonymous.ScheduledProcedureStepDescription = "entered at the console"
    ds.RequestAttributesSequence.append(anonymous)
    wanted = {"RequestedProcedureID": "RP-X", "ScheduledProcedureStepID": "SPS-X", "AccessionNumber": "ACC-X"}
    coerce(ds, {"RequestAttributesSequence": [wanted]}, MOD)
    items = ds.RequestAttributesSequence
    assert [i.get("ScheduledProcedureStepID", "") for i in items] == ["SPS-A", "SPS-B", "SPS-C", "SPS-X"]
    assert items[3].ScheduledProcedureStepDescription == "entered at the console"


def test_one_item_naming_another_step_is_still_coerced_in_place() -> None:
    """One item: the image is the matched order's (a modality that made up its own step id); unchanged rule."""
    ds = header()
    ds.RequestAttributesSequence = [_request_item("RP-A", "SPS-A", "ACC-A", "CT CHEST")]
    wanted = {"RequestedProcedureID": "RP-X", "ScheduledProcedureStepID": "SPS-X", "AccessionNumber": "ACC-X"}
    coerce(ds, {"RequestAttributesSequence": [wanted]}, MOD)
    (item,) = ds.RequestAttributesSequence
    assert (item.ScheduledProcedureStepID, item.ScheduledProcedureStepDescription) == ("SPS-X", "CT CHEST")


def test_a_code_sequence_of_several_items_still_takes_the_orders_one_code() -> None:
    """Only items that name a step or requested procedure keep their siblings: the order's procedure code
    replaces the modality's codes."""
    ds = header()
    codes = []
    for value in ("X1", "X2"):
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "L", value
        codes.append(code)
    ds.ProcedureCodeSequence = codes
    coerce(ds, {"ProcedureCodeSequence": [{"CodeValue": "CTHEAD", "CodingSchemeDesignator": "L"}]}, MOD)
    assert [c.CodeValue for c in ds.ProcedureCodeSequence] == ["CTHEAD"]
