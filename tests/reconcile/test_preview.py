"""``radbridge mapping test order-to-image CASE --image FILE``: what coercing a real image would change."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

from engine.mapping.cli import test as mapping_test

ROOT = Path(__file__).resolve().parents[2]
CASE = ROOT / "mappings" / "tests" / "order-to-image" / "mr_wrist_unknown_birth_date.input.json"


def test_mapping_test_shows_each_change_coercion_would_make(corpus: Path) -> None:
    out = StringIO()
    image = corpus / "dicom" / "study_dcm4che_MR_DOE_J1" / "MR01.dcm"
    assert mapping_test("order-to-image", CASE, ROOT / "mappings", as_json=True, out=out, image=image) == 0
    changes = {c["keyword"]: (c["before"], c["after"]) for c in json.loads(out.getvalue())["coercion"]}
    assert changes["PatientName"] == ("DOE^J1", "Doe^Jöhn")
    assert changes["SpecificCharacterSet"] == ("(absent)", "ISO_IR 192")
    assert "PatientID" not in changes and "PatientBirthDate" not in changes  # same id; empty birth date kept


def test_mapping_test_without_an_image_has_no_coercion_section() -> None:
    out = StringIO()
    assert mapping_test("order-to-image", CASE, ROOT / "mappings", as_json=True, out=out) == 0
    assert "coercion" not in json.loads(out.getvalue())


def test_mapping_test_prints_the_changes_as_text(corpus: Path) -> None:
    out = StringIO()
    image = corpus / "dicom" / "study_dcm4che_MR_DOE_J1" / "MR01.dcm"
    mapping_test("order-to-image", CASE, ROOT / "mappings", out=out, image=image)
    assert "'DOE^J1' -> 'Doe^Jöhn'" in out.getvalue()
