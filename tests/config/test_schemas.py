"""docs/engine.schema.json and docs/channel.schema.json are generated from the models and must match them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from engine.config.models import ChannelConfig, EngineConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize(("name", "model"), [("engine", EngineConfig), ("channel", ChannelConfig)])
def test_shipped_schema_is_the_models(name: str, model: type[BaseModel]) -> None:
    shipped = json.loads((DOCS / f"{name}.schema.json").read_text(encoding="utf-8"))
    hint = f"regenerate: radbridge schema {name} > docs/{name}.schema.json"
    assert shipped == model.model_json_schema(by_alias=True), hint
