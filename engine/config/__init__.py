"""Configuration: loading, environment substitution and validation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.config.loader import Located, UnresolvedYamlError, did_you_mean, load_yaml, validate_model
from engine.config.models import LEASE_MARGIN_SECONDS, SEND_BACKSTOP_SECONDS, ChannelConfig, EngineConfig
from engine.errors import ConfigError

__all__ = ["Config", "listeners", "load_config", "read_config"]


@dataclass(frozen=True)
class Config:
    """A validated configuration directory."""

    root: Path
    engine: EngineConfig
    channels: list[ChannelConfig] = field(default_factory=list)
    channel_files: dict[str, Path] = field(default_factory=dict)
    #: Each file as parsed, with the line of every key, for problems found after validation.
    located: dict[Path, Located] = field(default_factory=dict)

    @property
    def engine_file(self) -> Path:
        return self.root / "engine.yaml"

    def where(self, path: Path, loc: tuple[str | int, ...]) -> str:
        """``file:line: field`` of ``loc`` in ``path`` (line 1 when the file was not parsed)."""
        located = self.located.get(path)
        if located is None:
            return f"{path}:1: {'.'.join(str(p) for p in loc) or '(document)'}"
        return located.where(loc)

    def channel_where(self, channel: ChannelConfig, loc: tuple[str | int, ...]) -> str:
        """``file:line: field`` of ``loc`` in the file of ``channel``."""
        return self.where(self.channel_files[channel.name], loc)


def load_config(root: Path, env: Mapping[str, str] | None = None) -> Config:
    """Load ``root/engine.yaml`` and ``root/channels/*.yaml``; raise ConfigError listing every problem."""
    config, problems = read_config(root, env)
    if problems:
        raise ConfigError(problems)
    return config


def read_config(root: Path, env: Mapping[str, str] | None = None) -> tuple[Config, list[str]]:
    """Every valid part of ``root`` and every problem found in it, without raising.

    A channel file with a problem is left out of the returned configuration (and an
    engine.yaml with one is replaced by the defaults), so that checks of the other
    files can still run and report in the same pass.
    """
    env = os.environ if env is None else env
    if not root.is_dir():
        return Config(root, EngineConfig()), [
            f"{root}: configuration directory not found (looked for {root.absolute()}; run radbridge from the"
            " directory that holds it, e.g. the repository root, or give --config DIR or RADBRIDGE_CONFIG)"]
    problems: list[str] = []
    engine = EngineConfig()
    engine_file = root / "engine.yaml"
    located: dict[Path, Located] = {}
    if engine_file.exists():
        try:
            located[engine_file] = load_yaml(engine_file, env)
            engine = validate_model(EngineConfig, located[engine_file])
        except UnresolvedYamlError as exc:
            problems += exc.problems
            located[engine_file] = exc.located
            engine = _valid_part(exc.located, exc.unresolved)
        except ConfigError as exc:
            problems += exc.problems
            if engine_file in located:
                engine = _valid_part(located[engine_file], set())
    channels: list[ChannelConfig] = []
    files: dict[str, Path] = {}
    for path in sorted((root / "channels").glob("*.y*ml")):
        try:
            located[path] = load_yaml(path, env)
            channel = validate_model(ChannelConfig, located[path])
        except ConfigError as exc:
            problems += exc.problems
            continue
        if channel.name in files:
            problems.append(f"{located[path].where(('name',))}: channel {channel.name!r} is also defined in"
                            f" {files[channel.name]}")
            continue
        files[channel.name] = path
        channels.append(channel)
    config = Config(root, engine, channels, files, located)
    problems += _port_clashes(config)
    problems += _destination_problems(config)
    return config, problems


def _valid_part(located: Located, unresolved: set[str]) -> EngineConfig:
    """engine.yaml without its invalid top-level settings (those take their defaults).

    The checks of the channels depend on engine settings (``mappings_dir`` above all):
    a typo in one engine setting must not make every mapping name look unknown.
    """
    data = located.data if isinstance(located.data, dict) else {}
    data = {k: v for k, v in data.items() if k not in unresolved}
    for _ in range(len(data) + 1):
        try:
            return EngineConfig.model_validate(data)
        except ValidationError as exc:
            bad = {err["loc"][0] for err in exc.errors() if err["loc"]}
            if not bad & data.keys():
                break
            data = {k: v for k, v in data.items() if k not in bad}
    return EngineConfig()


#: Listening on one of these takes the port on every address.
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def listeners(config: Config) -> list[tuple[str, str, int, str]]:
    """(where, host, port, owner) of every fixed listening port."""
    out = []
    dicom = config.engine.dicom
    if dicom.enabled and dicom.port:
        out.append((config.where(config.engine_file, ("dicom", "port")), dicom.host, dicom.port, "the DICOM listener"))
    http = config.engine.http
    if http.enabled and http.port:
        out.append((config.where(config.engine_file, ("http", "port")), http.host, http.port, "the FHIR API"))
    for ch in config.channels:
        if ch.enabled and ch.source.port:
            out.append((config.channel_where(ch, ("source", "port")), ch.source.host, ch.source.port,
                        f"channel {ch.name!r}"))
    return out


def _port_clashes(config: Config) -> list[str]:
    """Two listeners on one port (of one address, or of any when either is a wildcard)."""
    taken: list[tuple[str, str, int, str]] = []
    out = []
    for where, host, port, owner in listeners(config):
        for other_where, other_host, other_port, other in taken:
            wildcard = host in _WILDCARD_HOSTS or other_host in _WILDCARD_HOSTS
            if port == other_port and (host == other_host or wildcard):
                # both places: the user must see which two files to reconcile
                out.append(f"{where}: {port} is already used by {other} ({_file_line(other_where)})")
                break
        taken.append((where, host, port, owner))
    return out


def _file_line(where: str) -> str:
    """``file:line`` of a ``file:line: field`` location."""
    return where.rsplit(": ", 1)[0]


def _destination_problems(config: Config) -> list[str]:
    """Destination names are unique across engine.yaml and every channel; MPPS names one of them."""
    engine = config.engine
    owners: dict[str, Path] = {}
    out = []
    located: list[tuple[Any, Path, tuple[str | int, ...]]]
    located = [(d, config.engine_file, ("destinations", i)) for i, d in enumerate(engine.destinations)]
    located += [(d, config.channel_files[c.name], ("destinations", i))
                for c in config.channels for i, d in enumerate(c.destinations)]
    located += [(r.mllp_destination(), config.engine_file, ("reports", "receivers", i))
                for i, r in enumerate(engine.reports.receivers) if r.mllp]
    lease = engine.outbox.lease_seconds
    for d, path, loc in located:
        if d.name in owners:
            out.append(f"{config.where(path, (*loc, 'name'))}: name {d.name!r} is also used in {owners[d.name]}")
        owners.setdefault(d.name, path)
        # the send's backstop and end margin, and as long again to start sends in
        least = d.timeout_seconds + SEND_BACKSTOP_SECONDS + 2 * LEASE_MARGIN_SECONDS
        if lease < least:
            out.append(
                f"{config.where(path, (*loc, 'timeout_seconds'))}: {d.name!r} timeout_seconds"
                f" {d.timeout_seconds:g} needs outbox.lease_seconds of at least {least:g} (now {lease:g})"
            )
    for i, r in enumerate(engine.reports.receivers):
        if r.destination and r.destination not in owners:
            out.append(f"{config.where(config.engine_file, ('reports', 'receivers', i, 'destination'))}: no destination"
                       f" named {r.destination!r} ({did_you_mean(r.destination, owners)})")
    least = engine.archive.replication_timeout_seconds + SEND_BACKSTOP_SECONDS + 2 * LEASE_MARGIN_SECONDS
    if engine.archive.secondary and lease < least:  # the copy to the secondary is an outbox delivery too
        out.append(f"{config.where(config.engine_file, ('archive', 'replication_timeout_seconds'))}:"
                   f" needs outbox.lease_seconds of at least {least:g} (now {lease:g})")
    status = engine.mpps.status_destination
    if status and status not in owners:
        out.append(f"{config.where(config.engine_file, ('mpps', 'status_destination'))}: no destination named"
                   f" {status!r} ({did_you_mean(status, owners)})")
    return out
