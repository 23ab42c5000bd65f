"""The running engine: one process, every configured channel and service.

``Runtime`` wires configuration to the database, channel runners, MLLP
listeners, the outbox worker and the scheduler, and owns their start and stop
order: the store first, listeners last; on stop, listeners first so that no
message is accepted that could not be finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from channels.mllp.source import MLLPServer
from engine.channel.persist import Persister
from engine.channel.prepare import MapFn, Preparer
from engine.channel.runner import ChannelRunner
from engine.config import Config, load_config
from engine.config.models import ChannelConfig
from engine.errors import ConfigError
from engine.handlers import create_handler
from engine.hl7.er7 import Message
from engine.jobs import recorded
from engine.outbox.destination import create_destination
from engine.outbox.rows import release_all
from engine.outbox.worker import OutboxWorker, Route
from engine.store.database import Database

__all__ = ["Runtime", "run"]

log = logging.getLogger(__name__)

#: Modules whose import registers built-in handlers (same door as site plugins).
HANDLER_MODULES: tuple[str, ...] = ("engine.domain.handlers",)


def _load_handler_modules() -> None:
    for name in HANDLER_MODULES:
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(name)


def load_channel_mappings(config: Config) -> dict[str, MapFn]:
    """Compile the mappings the channels name; channel name → its mapping function.

    Raises ConfigError (nothing applied) if any mapping file is invalid or a
    channel names a mapping that does not exist.
    """
    channels = [c for c in config.channels if c.enabled and c.mapping_names]
    if not channels:
        return {}
    from engine.mapping import load_mappings

    compiled = load_mappings(config.engine.mappings_dir, timezone=config.engine.timezone)
    problems = [
        f"{config.channel_files[c.name]}:1: mapping: no mapping named {name!r} in {config.engine.mappings_dir}"
        for c in channels for name in c.mapping_names if name not in compiled
    ]
    if problems:
        raise ConfigError(problems)
    return {c.name: _dispatch([compiled[n] for n in c.mapping_names]) for c in channels}


def _dispatch(mappings: list[Any]) -> MapFn:
    """The first mapping whose ``accept`` list takes the message applies; none: no records."""

    def apply(message: Message) -> list[dict[str, Any]]:
        for mapping in mappings:
            if mapping.accepts(message):
                return list(mapping.apply(message, provenance=False).records)
        return []

    return apply


@dataclass
class Runtime:
    """Everything one ``radbridge run`` process runs."""

    config: Config
    db: Database | None = None
    runners: dict[str, ChannelRunner] = field(default_factory=dict)
    servers: dict[str, MLLPServer] = field(default_factory=dict)
    worker: OutboxWorker | None = None
    scheduler: AsyncIOScheduler | None = None
    dicom: Any = None

    async def start(self) -> None:
        """Open the store, migrate, then start the worker, scheduler and listeners."""
        cfg = self.config.engine
        mappings = load_channel_mappings(self.config)
        _load_handler_modules()
        self.db = Database(
            cfg.database_url(), cfg.database.sqlite_synchronous, cfg.database.pool_size, cfg.database.sqlite_page_size
        )
        await asyncio.to_thread(self.db.migrate)
        if self.db.is_sqlite:  # one process per SQLite file: leases left by a crash are ours to drop
            released = await self.db.writer.run(release_all)
            if released:
                log.info("released %d outbox lease(s) left by the previous run", released)
        self.worker = OutboxWorker(self.db, self._routes(), cfg.outbox)
        self.worker.start()
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        # A coroutine job runs on the loop; a plain function would run in the executor's threads.
        self.scheduler.add_job(self._poll_outbox, "interval", seconds=cfg.outbox.poll_interval_seconds,
                               id="outbox-poll", coalesce=True, max_instances=1)
        self._schedule_housekeeping(self.scheduler)
        self.scheduler.start()
        if cfg.dicom.enabled:
            from channels.dicom.server import start_dicom_server

            self.dicom = await asyncio.to_thread(start_dicom_server, cfg, self.db)
            log.info("DICOM worklist/MPPS listening on %s:%s as %s", cfg.dicom.host, self.dicom.port,
                     cfg.dicom.ae_title)
        for channel in self.config.channels:
            if channel.enabled:
                await self._start_channel(channel, mappings.get(channel.name))

    async def _poll_outbox(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    def _schedule_housekeeping(self, scheduler: AsyncIOScheduler) -> None:
        from zoneinfo import ZoneInfo

        from engine.domain.housekeeping import message_jobs, schedule_jobs, worklist_jobs

        assert self.db is not None
        cfg = self.config.engine
        jobs = worklist_jobs(self.db, cfg.worklist, ZoneInfo(cfg.timezone))
        jobs += message_jobs(self.db, cfg.messages, cfg.worklist.housekeeping_interval_seconds)
        schedule_jobs(scheduler, [replace(j, run=recorded(self.db, j.id, j.description, j.run)) for j in jobs])

    def _routes(self) -> dict[str, Route]:
        """Every destination, engine-level and per channel (names checked unique at load)."""
        cfg = self.config
        dests = [*cfg.engine.destinations, *(d for c in cfg.channels for d in c.destinations)]
        return {d.name: Route(create_destination(d), d.retry, d.timeout_seconds) for d in dests}

    async def _start_channel(self, channel: ChannelConfig, mapping: MapFn | None) -> None:
        assert self.db is not None and self.worker is not None
        ident = self.config.engine.identity
        handlers = [create_handler(h, self.config.engine, channel) for h in channel.handlers]
        runner = ChannelRunner(channel, Preparer(channel, mapping),
                               Persister(channel, handlers, ident.application, ident.facility),
                               self.db, self.worker.wake)
        server = MLLPServer(channel.source, runner)
        await server.start()
        self.runners[channel.name] = runner
        self.servers[channel.name] = server

    async def stop(self) -> None:
        """Stop listeners, then the scheduler and worker, then the store."""
        for server in self.servers.values():
            await server.stop()
        if self.dicom is not None:
            await asyncio.to_thread(self.dicom.stop)
            self.dicom = None
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.worker is not None:
            await self.worker.stop()
        if self.db is not None:
            await asyncio.to_thread(self.db.close)


async def _serve(config_dir: Path) -> int:
    runtime = Runtime(load_config(config_dir))
    await runtime.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(runtime, config_dir)))
    # Only now: whoever reads the pid (``radbridge reload``) may send SIGHUP, whose default
    # action would end the process.
    pid_file = runtime.config.engine.data_dir / "radbridge.pid"
    pid_file.write_text(str(os.getpid()))
    log.info("radbridge running: %d channel(s)", len(runtime.servers))
    await stop.wait()
    log.info("radbridge stopping")
    await runtime.stop()
    with contextlib.suppress(OSError):
        pid_file.unlink()
    return 0


async def _reload(runtime: Runtime, config_dir: Path) -> None:
    """SIGHUP: validate the new configuration; apply it only if all of it is valid."""
    try:
        new = load_config(config_dir)
        load_channel_mappings(new)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration:\n%s", exc)
        return
    log.info("configuration valid; restarting channels")
    await runtime.stop()
    runtime.config = new
    runtime.runners.clear()
    runtime.servers.clear()
    await runtime.start()


def raise_open_file_limit() -> int:
    """Lift the soft limit on open descriptors to the hard limit; return the limit in force.

    Every plain-TCP MLLP connection holds two descriptors (the transport's and the
    writer thread's, see channels/mllp/source.py), on top of the database files and DICOM
    associations; the common soft default of 1,024 would refuse connections early.
    """
    try:
        import resource
    except ModuleNotFoundError:  # not on POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return soft


def run(config_dir: Path) -> int:
    """``radbridge run``: serve until SIGTERM/SIGINT (on uvloop when installed, unless
    ``RADBRIDGE_EVENT_LOOP=asyncio``)."""
    limit = raise_open_file_limit()
    if 0 <= limit < 4096:
        log.warning("open file limit is %d: each MLLP connection uses two (raise the hard limit)", limit)
    try:
        import uvloop
    except ModuleNotFoundError:
        return asyncio.run(_serve(config_dir))
    if os.environ.get("RADBRIDGE_EVENT_LOOP") == "asyncio":
        return asyncio.run(_serve(config_dir))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(config_dir))
