"""Checks of the names and files a configuration refers to, each problem at its line.

Validation of one file (``extra="forbid"``, types, ranges) cannot see whether
``handlers: [patiens]`` names a registered handler, whether a mapping file of
that name exists or whether a TLS certificate is on disk. These checks do,
with a did-you-mean for a mistyped name, so that ``check-config``, ``run``
and ``reload`` refuse such a configuration before anything changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from engine.config import Config
from engine.config.forwarding import forwarding_problems
from engine.config.loader import did_you_mean
from engine.config.models import ChannelConfig, TLSConfig

__all__ = ["reference_problems", "tls_settings"]

Loc = tuple[str | int, ...]


def reference_problems(config: Config, handlers: Iterable[str], mappings: Iterable[str]) -> list[str]:
    """Every unknown handler or mapping name and every missing file, as ``file:line: field: message``.

    ``handlers`` are the registered handler names, ``mappings`` the mapping names found in
    ``mappings_dir``. Disabled channels are checked too: enabling one must not be a surprise.
    """
    handler_names, mapping_names = sorted(handlers), sorted(mappings)
    problems: list[str] = []
    for channel in config.channels:
        problems += _unknown(config, channel, "handlers", channel.handlers, "handler", handler_names)
        names = channel.mapping_names
        field = "mapping" if isinstance(channel.mapping, str) else None
        problems += _unknown(config, channel, field or "mapping", names, "mapping", mapping_names,
                             single=field is not None,
                             where_to_look=f" in {config.engine.mappings_dir}")
    problems += _receiver_mappings(config, mapping_names)
    problems += _missing_files(config)
    problems += forwarding_problems(config)  # DICOM destinations (engine.config.forwarding)
    return problems


def _receiver_mappings(config: Config, known: list[str]) -> list[str]:
    """Each ``reports.receivers[].mapping`` names a mapping file (checked even while the receiver is off)."""
    out = []
    for i, receiver in enumerate(config.engine.reports.receivers):
        if receiver.mapping not in known:
            where = config.where(config.engine_file, ("reports", "receivers", i, "mapping"))
            out.append(f"{where}: unknown mapping {receiver.mapping!r} in {config.engine.mappings_dir}"
                       f" ({did_you_mean(receiver.mapping, known)})")
    return out


def _unknown(
    config: Config, channel: ChannelConfig, field: str, names: list[str], what: str, known: list[str],
    *, single: bool = False, where_to_look: str = "",
) -> list[str]:
    out = []
    for i, name in enumerate(names):
        if name not in known:
            loc: Loc = (field,) if single else (field, i)
            out.append(f"{config.channel_where(channel, loc)}: unknown {what} {name!r}{where_to_look}"
                       f" ({did_you_mean(name, known)})")
    return out


def tls_settings(config: Config) -> Iterator[tuple[Path, Loc, TLSConfig, bool]]:
    """(file, location, settings, is_server) of every TLS block in the configuration."""
    engine = config.engine
    if engine.dicom.tls is not None:
        yield config.engine_file, ("dicom", "tls"), engine.dicom.tls, True
    if engine.http.tls is not None:
        yield config.engine_file, ("http", "tls"), engine.http.tls, True
    for i, d in enumerate(engine.destinations):
        if d.tls is not None:
            yield config.engine_file, ("destinations", i, "tls"), d.tls, False
    for channel in config.channels:
        path = config.channel_files[channel.name]
        if channel.source.tls is not None:
            yield path, ("source", "tls"), channel.source.tls, True
        for i, d in enumerate(channel.destinations):
            if d.tls is not None:
                yield path, ("destinations", i, "tls"), d.tls, False


def _missing_files(config: Config) -> list[str]:
    out = []
    for path, loc, tls, _ in tls_settings(config):
        for key in ("cert_file", "key_file", "ca_file"):
            file = getattr(tls, key)
            if file is not None and not Path(file).is_file():
                out.append(f"{config.where(path, (*loc, key))}: file not found: {file}")
    table = config.engine.orders.order_control_table
    if table is not None and not table.is_file():
        out.append(f"{config.where(config.engine_file, ('orders', 'order_control_table'))}: file not found: {table}")
    status_table = config.engine.reports.status_table
    if status_table is not None and not status_table.is_file():
        out.append(f"{config.where(config.engine_file, ('reports', 'status_table'))}: file not found: {status_table}")
    if any(c.mapping_names for c in config.channels) and not config.engine.mappings_dir.is_dir():
        out.append(f"{config.where(config.engine_file, ('mappings_dir',))}: directory not found:"
                   f" {config.engine.mappings_dir}")
    return out
