"""Two listeners on one port are a configuration error naming both files; the shipped example collides with nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.config import load_config, read_config
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _mllp_channel(name: str, port: int) -> str:
    return f"name: {name}\nsource:\n  type: mllp\n  host: 127.0.0.1\n  port: {port}\n"


def _config_dir(tmp: Path, *channels: tuple[str, str]) -> Path:
    (tmp / "channels").mkdir(parents=True)
    (tmp / "engine.yaml").write_text(f"dicom: {{enabled: false}}\nmappings_dir: {ROOT / 'mappings'}\n")
    for name, body in channels:
        (tmp / "channels" / name).write_text(body)
    return tmp


def test_two_channels_on_one_port_are_refused_naming_both_files(tmp_path):
    root = _config_dir(tmp_path, ("a-orders.yaml", _mllp_channel("orders", 2590)),
                       ("b-reports.yaml", _mllp_channel("reports", 2590)))
    with pytest.raises(ConfigError) as exc:
        load_config(root, {})
    assert exc.value.problems == [
        f"{root / 'channels' / 'b-reports.yaml'}:5: source.port: 2590 is already used by channel 'orders'"
        f" ({root / 'channels' / 'a-orders.yaml'}:5)"
    ]


def test_a_channel_on_the_dicom_port_names_engine_yaml(tmp_path):
    root = _config_dir(tmp_path, ("c.yaml", _mllp_channel("c", 11112)))
    (root / "engine.yaml").write_text(f"mappings_dir: {ROOT / 'mappings'}\ndicom:\n  port: 11112\n")
    _, problems = read_config(root, {})
    assert problems == [f"{root / 'channels' / 'c.yaml'}:5: source.port: 11112 is already used by the DICOM"
                        f" listener ({root / 'engine.yaml'}:3)"]


def test_the_forwarding_example_copied_next_to_the_shipped_channels_is_valid_and_sends_to_none_of_them(tmp_path):
    """README: ``config/channels/adt-forward.yaml.example`` is a channel to copy; copied as is, it must not
    listen on a shipped port nor forward, by default, to one of our own listeners (ADT to reports-inbound: AR)."""
    root = tmp_path / "config"
    shutil.copytree(ROOT / "config", root)
    shutil.copy(root / "channels" / "adt-forward.yaml.example", root / "channels" / "adt-forward.yaml")
    config, problems = read_config(root, {})
    assert problems == []
    ours = {ch.source.port for ch in config.channels} | {config.engine.dicom.port, config.engine.http.port}
    (forward,) = [ch for ch in config.channels if ch.name == "adt-forward"]
    assert len(config.channels) == 3
    assert [d.port for d in forward.destinations if d.port in ours] == []


def test_every_port_in_use_is_reported_before_the_store_is_opened(tmp_path):
    import asyncio
    import socket

    from engine.runtime import Runtime

    with socket.socket() as one, socket.socket() as two:
        for holder in (one, two):
            holder.bind(("127.0.0.1", 0))
            holder.listen()
        ports = [one.getsockname()[1], two.getsockname()[1]]
        root = _config_dir(tmp_path / "config", ("a.yaml", _mllp_channel("a", ports[0])),
                           ("b.yaml", _mllp_channel("b", ports[1])))
        with (root / "engine.yaml").open("a") as engine:
            engine.write(f"data_dir: {tmp_path / 'var'}\n")
        with pytest.raises(ConfigError) as exc:
            asyncio.run(Runtime(load_config(root, {})).start())
    assert exc.value.problems == [
        f"{root / 'channels' / name}:5: source.port: cannot listen on 127.0.0.1:{port}: address already in use"
        for name, port in zip(("a.yaml", "b.yaml"), ports, strict=True)
    ]
    assert not (tmp_path / "var" / "radbridge.db").exists()
