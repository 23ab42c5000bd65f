"""A configuration made ready to run: checked, compiled and built, with nothing started.

``build_plan`` does every check that can be done without binding a port or
opening the database: the files themselves, the names they refer to
(handlers, mappings, code tables, transforms, destinations), TLS material,
port clashes, and the construction of every handler. It either returns a
:class:`Plan` or raises one ConfigError listing every problem, so ``run``
and ``reload`` change nothing when a configuration is bad, and
``check-config`` reports all of it in one pass.
"""

from __future__ import annotations

import contextlib
import importlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.channel.prepare import MapFn
from engine.config import Config, read_config
from engine.config.references import reference_problems, tls_settings
from engine.errors import ConfigError
from engine.handlers import Handler, create_handler, handler_names
from engine.hl7.er7 import Message
from engine.tls import client_context, server_context

__all__ = ["HANDLER_MODULES", "Plan", "build_plan", "check_directory", "load_handler_modules"]

#: Modules whose import registers built-in handlers (same door as site plugins).
HANDLER_MODULES: tuple[str, ...] = ("engine.domain.handlers", "engine.domain.report_handler")


@dataclass(frozen=True)
class Plan:
    """What the enabled channels run: their mapping function and handler instances."""

    config: Config
    mappings: dict[str, MapFn]
    handlers: dict[str, list[Handler]]


def load_handler_modules() -> None:
    """Import the modules that register handlers (idempotent)."""
    for name in HANDLER_MODULES:
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(name)


def check_directory(root: Path, env: Mapping[str, str] | None = None) -> Plan:
    """Read ``root`` and build its plan; one ConfigError lists the problems of every file."""
    config, problems = read_config(root, env)
    try:
        plan = build_plan(config)
    except ConfigError as exc:
        raise ConfigError(problems + exc.problems) from None
    if problems:
        raise ConfigError(problems)
    return plan


def build_plan(config: Config) -> Plan:
    """Check every reference of ``config`` and build its handlers; raise ConfigError listing all problems."""
    load_handler_modules()
    problems = reference_problems(config, handler_names(), _mapping_names(config))
    problems += _tls_problems(config)
    mappings = _compile(config, problems)
    handlers = _handlers(config, problems)
    _receiver_problems(config, problems)
    if problems:
        raise ConfigError(problems)
    return Plan(config, mappings, handlers)


def _mapping_names(config: Config) -> list[str]:
    from engine.mapping import mapping_files

    return [p.stem for p in mapping_files(config.engine.mappings_dir)]


def _tls_problems(config: Config) -> list[str]:
    """TLS files that exist but cannot be used (not PEM, key not matching the certificate)."""
    out = []
    for path, loc, tls, server in tls_settings(config):
        files = [tls.cert_file, tls.key_file, tls.ca_file]
        if not all(f is None or Path(f).is_file() for f in files):
            continue  # reported as missing already
        try:
            server_context(tls) if server else client_context(tls)
        except (ssl.SSLError, OSError, ValueError) as exc:
            out.append(f"{config.where(path, loc)}: TLS material cannot be loaded: {exc}")
    return out


def _compile(config: Config, problems: list[str]) -> dict[str, MapFn]:
    """Compile the mapping files when a channel names one; channel name → its mapping function."""
    channels = [c for c in config.channels if c.enabled and c.mapping_names]
    if not channels or not config.engine.mappings_dir.is_dir():
        return {}
    from engine.mapping import load_mappings

    try:
        compiled = load_mappings(config.engine.mappings_dir, timezone=config.engine.timezone)
    except ConfigError as exc:
        problems += exc.problems
        return {}
    return {c.name: _dispatch([compiled[n] for n in c.mapping_names if n in compiled]) for c in channels}


def _dispatch(mappings: list[Any]) -> MapFn:
    """The first mapping whose ``accept`` list takes the message applies; none: no records."""

    def apply(message: Message) -> list[dict[str, Any]]:
        for mapping in mappings:
            if mapping.accepts(message):
                return list(mapping.apply(message, provenance=False).records)
        return []

    return apply


def _receiver_problems(config: Config, problems: list[str]) -> None:
    """``reports.receivers`` mappings must write HL7 v2, whichever channels run the ``reports`` handler."""
    if not config.engine.reports.receivers or not config.engine.mappings_dir.is_dir():
        return
    from engine.domain.report_handler import receivers

    try:
        receivers(config.engine)
    except ConfigError as exc:
        problems += [p for p in exc.problems if p not in problems]


def _handlers(config: Config, problems: list[str]) -> dict[str, list[Handler]]:
    """Each enabled channel's handlers, built now so that a factory's failure is a config problem."""
    known = set(handler_names())
    out: dict[str, list[Handler]] = {}
    for channel in config.channels:
        if not channel.enabled:
            continue
        built = []
        for i, name in enumerate(channel.handlers):
            if name not in known:
                continue  # reported with a suggestion by reference_problems
            try:
                built.append(create_handler(name, config.engine, channel))
            except ConfigError as exc:  # a file the handler reads, already located
                problems += [p for p in exc.problems if p not in problems]
            except Exception as exc:  # a site plugin may raise anything: report it, never start
                problems.append(f"{config.channel_where(channel, ('handlers', i))}: handler {name!r} cannot"
                                f" start: {exc}")
        out[channel.name] = built
    return out
