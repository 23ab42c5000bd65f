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


def test_a_channel_file_sets_the_timestamp_policy_and_a_wrong_value_names_file_line_and_field(tmp_path) -> None:
    import pytest

    from engine.config import load_config
    from engine.errors import ConfigError

    (tmp_path / "channels").mkdir()
    (tmp_path / "engine.yaml").write_text("")
    channel = tmp_path / "channels" / "c1.yaml"
    channel.write_text("name: c1\nsource: {type: mllp, port: 0}\naccept:\n  timestamps: strict\n")
    assert load_config(tmp_path, {}).channels[0].accept.timestamps == "strict"
    channel.write_text("name: c1\nsource: {type: mllp, port: 0}\naccept:\n  timestamps: loose\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path, {})
    [problem] = exc.value.problems
    assert "c1.yaml:4" in problem and "accept.timestamps" in problem
