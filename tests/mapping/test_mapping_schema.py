"""docs/mapping.schema.json is generated from the file model and must stay in step with it."""

from __future__ import annotations

import json

import yaml

from engine.mapping.model import MappingFile, json_schema

from .conftest import MAPPINGS_DIR, REPO_ROOT


def test_shipped_schema_matches_the_model() -> None:
    shipped = json.loads((REPO_ROOT / "docs" / "mapping.schema.json").read_text(encoding="utf-8"))
    assert shipped == json_schema(), "regenerate docs/mapping.schema.json (see docs/mapping.md)"


def test_shipped_mappings_validate_against_the_model() -> None:
    for path in MAPPINGS_DIR.glob("*.yaml"):
        MappingFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
