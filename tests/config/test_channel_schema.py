"""docs/channel.schema.json is generated from ChannelConfig (``radbridge schema channel``) and must stay in step."""

from __future__ import annotations

import json
from pathlib import Path

from engine.config.models import ChannelConfig

DOCS = Path(__file__).parents[2] / "docs"


def test_shipped_channel_schema_matches_the_model() -> None:
    shipped = json.loads((DOCS / "channel.schema.json").read_text(encoding="utf-8"))
    assert shipped == ChannelConfig.model_json_schema(by_alias=True), "regenerate: radbridge schema channel"


def test_the_channel_schema_documents_the_timestamp_policy() -> None:
    accept = ChannelConfig.model_json_schema(by_alias=True)["$defs"]["AcceptConfig"]["properties"]
    assert accept["timestamps"]["enum"] == ["lenient", "strict"] and accept["timestamps"]["default"] == "lenient"
