"""Configuration: loading, environment substitution and validation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.config.loader import load_yaml, validate_model
from engine.config.models import LEASE_MARGIN_SECONDS, SEND_BACKSTOP_SECONDS, ChannelConfig, EngineConfig
from engine.errors import ConfigError

__all__ = ["Config", "load_config"]


@dataclass(frozen=True)
class Config:
    """A validated configuration directory."""

    root: Path
    engine: EngineConfig
    channels: list[ChannelConfig] = field(default_factory=list)
    channel_files: dict[str, Path] = field(default_factory=dict)


def load_config(root: Path, env: Mapping[str, str] | None = None) -> Config:
    """Load ``root/engine.yaml`` and ``root/channels/*.yaml``; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    engine = EngineConfig()
    engine_file = root / "engine.yaml"
    if not root.is_dir():
        raise ConfigError([f"{root}: configuration directory not found"])
    if engine_file.exists():
        try:
            engine = validate_model(EngineConfig, load_yaml(engine_file, env))
        except ConfigError as exc:
            problems += exc.problems
    channels: list[ChannelConfig] = []
    files: dict[str, Path] = {}
    for path in sorted((root / "channels").glob("*.y*ml")):
        try:
            located = load_yaml(path, env)
            channel = validate_model(ChannelConfig, located)
        except ConfigError as exc:
            problems += exc.problems
            continue
        if channel.name in files:
            problems.append(f"{path}:1: name: channel {channel.name!r} is also defined in {files[channel.name]}")
            continue
        files[channel.name] = path
        channels.append(channel)
    problems += _port_clashes(channels, files)
    problems += _destination_problems(engine, engine_file, channels, files)
    if problems:
        raise ConfigError(problems)
    return Config(root, engine, channels, files)


def _port_clashes(channels: list[ChannelConfig], files: dict[str, Path]) -> list[str]:
    seen: dict[tuple[str, int], str] = {}
    out = []
    for ch in channels:
        if not ch.enabled or ch.source.port == 0:
            continue
        key = (ch.source.host, ch.source.port)
        if key in seen:
            out.append(f"{files[ch.name]}:1: source.port: {key[1]} is already used by channel {seen[key]!r}")
        seen[key] = ch.name
    return out


def _destination_problems(
    engine: EngineConfig, engine_file: Path, channels: list[ChannelConfig], files: dict[str, Path]
) -> list[str]:
    """Destination names are unique across engine.yaml and every channel; MPPS names one of them."""
    owners: dict[str, Path] = {}
    out = []
    located = [(d, engine_file) for d in engine.destinations]
    located += [(d, files[c.name]) for c in channels for d in c.destinations]
    lease = engine.outbox.lease_seconds
    for d, path in located:
        if d.name in owners:
            out.append(f"{path}:1: destinations: name {d.name!r} is also used in {owners[d.name]}")
        owners.setdefault(d.name, path)
        # the send's backstop and end margin, and as long again to start sends in
        least = d.timeout_seconds + SEND_BACKSTOP_SECONDS + 2 * LEASE_MARGIN_SECONDS
        if lease < least:
            out.append(
                f"{path}:1: destinations: {d.name!r} timeout_seconds {d.timeout_seconds:g} needs"
                f" outbox.lease_seconds of at least {least:g} (now {lease:g})"
            )
    status = engine.mpps.status_destination
    if status and status not in owners:
        out.append(f"{engine_file}:1: mpps.status_destination: no destination named {status!r}")
    return out
