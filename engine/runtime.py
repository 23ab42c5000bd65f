"""The running engine: one process, every configured channel and service.

``Runtime`` wires configuration to the database, channel runners, MLLP
listeners, the outbox worker and the scheduler, and owns their start and stop
order: the store first, listeners last; on stop, listeners first so that no
message is accepted that could not be finished.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from engine.config import Config, listeners, load_config
from engine.config.models import ChannelConfig
from engine.datadir import PROCESS_UMASK, prepare_data_dir
from engine.errors import AlreadyRunning, ConfigError
from engine.fhir.triggers import install as install_triggers
from engine.jobs import recorded
from engine.outbox.destination import DestinationContext, create_destination
from engine.outbox.rows import release_all
from engine.outbox.worker import OutboxWorker, Route
from engine.pidfile import PidFile
from engine.plan import HANDLER_MODULES, Plan, build_plan, check_directory
from engine.serving import SERVING_FILE, endpoints, remove_serving, write_serving
from engine.store.database import Database

__all__ = ["HANDLER_MODULES", "Runtime", "load_channel_mappings", "run"]

log = logging.getLogger(__name__)

#: engine.yaml sections that the long-lived services (store, DICOM listener, scheduler jobs,
#: logging) read once at start: a reload that changes one is refused as a whole.
RESTART_SECTIONS: tuple[str, ...] = ("data_dir", "database", "dicom", "archive", "http", "logging", "worklist", "mpps")


def load_channel_mappings(config: Config) -> dict[str, MapFn]:
    """The mapping function of each enabled channel that names mappings (every reference checked).

    Raises ConfigError (nothing applied) listing every problem of the configuration.
    """
    return build_plan(config).mappings


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
    receive_pool: Any = None  # channels.dicom.receive_pool.ReceivePool when dicom.receive_processes > 0
    archive: Any = None  # engine.archive.archive.Archive when C-STORE is on
    http: Any = None  # channels.fhir.server.HttpServer
    projector: Any = None  # engine.fhir.projector.Projector
    authorizer: Any = None  # an engine.auth.Authorizer; None: chosen by http.auth
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> None:
        """Check everything, then open the store, migrate, start the worker, scheduler and listeners.

        Raises ConfigError, with whatever had started stopped again, when the configuration
        has a problem or a port cannot be bound.
        """
        plan = build_plan(self.config)
        busy = await asyncio.to_thread(unbindable_ports, self.config)
        if busy:  # every one of them, before the store is opened or anything listens
            raise ConfigError(busy)
        try:
            await self._start(plan)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, plan: Plan) -> None:
        cfg = self.config.engine
        self.db = Database(
            cfg.database_url(), cfg.database.sqlite_synchronous, cfg.database.pool_size, cfg.database.sqlite_page_size,
            write_lock=cfg.dicom.enabled and cfg.dicom.receive_processes > 0,  # the receive workers write it too
            answer_timeout=cfg.database.answer_timeout_seconds,
        )
        log.info("store: %s", self.db.display_url)
        await asyncio.to_thread(self.db.migrate)
        # The FHIR change feed's triggers, before anything listens: replacing one locks its table, which
        # deadlocks with a receive worker's first writes on PostgreSQL (the projector's start finds them in place).
        await self.db.writer.run(install_triggers)
        if self.db.is_sqlite:  # one process per SQLite file: leases left by a crash are ours to drop
            released = await self.db.writer.run(release_all)
            if released:
                log.info("released %d outbox lease(s) left by the previous run", released)
        if cfg.dicom.enabled and cfg.archive.enabled:  # both locations checked before anything listens
            from engine.archive.service import (
                backfill_copies,
                checked_archive,
                drop_copies_owed_to_a_removed_secondary,
            )

            self.archive = await asyncio.to_thread(checked_archive, self.config)
            if self.archive.secondary is not None:
                await asyncio.to_thread(backfill_copies, self.db)
            else:
                await asyncio.to_thread(drop_copies_owed_to_a_removed_secondary, self.db)
        self.worker = OutboxWorker(self.db, self._routes(), cfg.outbox)
        self.worker.start()
        _log_forwarding(self.config)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        # A coroutine job runs on the loop; a plain function would run in the executor's threads.
        self.scheduler.add_job(self._poll_outbox, "interval", seconds=cfg.outbox.poll_interval_seconds,
                               id="outbox-poll", coalesce=True, max_instances=1, misfire_grace_time=None)
        self._schedule_housekeeping(self.scheduler)
        self.scheduler.start()
        if cfg.dicom.enabled:
            await self._start_dicom()
        await self._start_fhir()
        _log_report_receivers(self.config)
        for channel in self.config.channels:
            if channel.enabled:
                server = await _listen(self.config, channel, self._runner(plan, channel))
                self.servers[channel.name] = server
                self.runners[channel.name] = server.runner

    def publish_serving(self) -> None:
        """Write what this engine serves, with the ports as bound, for ``radbridge status`` (engine.serving)."""
        dicom_port = int(self.dicom.port) if self.dicom is not None else None
        http_port = int(self.http.port) if self.http is not None else None
        mllp = {name: server.port for name, server in self.servers.items()}
        try:
            write_serving(Path(self.config.engine.data_dir), endpoints(self.config, dicom_port, http_port, mllp))
        except OSError as exc:  # status then shows the configuration's addresses, and says so
            log.warning("cannot write %s for radbridge status: %s", SERVING_FILE, exc.strerror or exc)

    async def _start_dicom(self) -> None:
        cfg = self.config.engine
        assert self.db is not None
        try:
            self.dicom = await asyncio.to_thread(self._dicom_listener)
        except OSError as exc:
            where = self.config.where(self.config.engine_file, ("dicom", "port"))
            raise ConfigError([f"{where}: cannot listen on {cfg.dicom.host}:{cfg.dicom.port}:"
                               f" {exc.strerror or exc}"]) from exc
        log.info("DICOM (worklist, MPPS, C-STORE, C-ECHO) listening on %s:%s as %s", cfg.dicom.host, self.dicom.port,
                 cfg.dicom.ae_title)

    def _dicom_listener(self) -> Any:
        """The DICOM listener: associations in this process, or in ``dicom.receive_processes`` workers
        (channels.dicom.receive_pool) that a worker's commit wakes the outbox and the projector from."""
        from channels.dicom.server import start_dicom_listener, start_dicom_server

        cfg = self.config.engine
        assert self.db is not None
        if cfg.dicom.receive_processes == 0:
            return start_dicom_server(cfg, self.db, self._wake)
        from channels.dicom.receive_pool import ReceivePool

        self.receive_pool = ReceivePool(cfg, cfg.dicom.receive_processes, self._wake,
                                        self.db.writer.notify_commit_listeners)
        return start_dicom_listener(cfg, self.receive_pool.hand_off, self.receive_pool.start)

    async def _start_fhir(self) -> None:
        from channels.fhir.wiring import start_http, start_projector

        assert self.db is not None
        self.projector = await start_projector(self.config.engine, self.db, self._wake)
        if self.config.engine.http.enabled:
            try:
                self.http = await start_http(self.config.engine, self.db, self.authorizer)
            except OSError as exc:
                where = self.config.where(self.config.engine_file, ("http", "port"))
                http = self.config.engine.http
                raise ConfigError([f"{where}: cannot listen on {http.host}:{http.port}:"
                                   f" {exc.strerror or exc}"]) from exc

    async def _poll_outbox(self) -> None:
        self._wake()

    def _wake(self) -> None:
        """Wake the current worker (a reload may have replaced it)."""
        if self.worker is not None:
            self.worker.wake()

    def _schedule_housekeeping(self, scheduler: AsyncIOScheduler) -> None:
        from zoneinfo import ZoneInfo

        from engine.domain.housekeeping import message_jobs, schedule_jobs, worklist_jobs

        assert self.db is not None
        cfg = self.config.engine
        jobs = worklist_jobs(self.db, cfg.worklist, ZoneInfo(cfg.timezone))
        jobs += message_jobs(self.db, cfg.messages, cfg.worklist.housekeeping_interval_seconds)
        from engine.domain.late_reconcile import late_jobs  # reconciliation (#13): late orders

        jobs += late_jobs(self.db, cfg)
        from engine.fhir.retention import history_jobs  # bounds fhir_versions

        jobs += history_jobs(self.db, cfg.http.fhir.history)
        if self.archive is not None:
            from engine.archive.service import archive_jobs

            jobs += archive_jobs(cfg.archive, self.archive, self.db)
        schedule_jobs(scheduler, [replace(j, run=recorded(self.db, j.id, j.description, j.run)) for j in jobs])

    def _routes(self) -> dict[str, Route]:
        """Every configured destination, and the copies to the archive's secondary location."""
        from engine.archive.service import replication_routes

        assert self.db is not None
        archive = self.config.engine.archive
        return {**_routes(self.config, self.db), **replication_routes(archive, self.archive, self.db)}

    def _runner(self, plan: Plan, channel: ChannelConfig) -> ChannelRunner:
        assert self.db is not None
        ident = plan.config.engine.identity
        persister = Persister(channel, plan.handlers.get(channel.name, []), ident.application, ident.facility)
        return ChannelRunner(channel, Preparer(channel, plan.mappings.get(channel.name)), persister, self.db,
                             self._wake)

    async def reload(self, new: Config) -> None:
        """Apply ``new`` all or nothing.

        Everything is checked and every new listener bound before anything running
        changes; on any problem a ConfigError is raised and the running channels,
        listeners and worker are exactly as they were. A listener whose settings are
        unchanged keeps its socket and connections and takes the new pipeline for the
        next frame.
        """
        async with self._reloading:
            plan = build_plan(new)
            _refuse_restart_changes(self.config, new)
            kept, fresh = await self._bind(plan)
            await self._switch(plan, kept, fresh)
            self.publish_serving()

    async def _bind(self, plan: Plan) -> tuple[dict[str, tuple[MLLPServer, ChannelRunner]], dict[str, MLLPServer]]:
        """Pair each new channel with a running listener of the same settings, or bind a new one."""
        running = {server.config: server for server in self.servers.values()}
        kept: dict[str, tuple[MLLPServer, ChannelRunner]] = {}
        fresh: dict[str, MLLPServer] = {}
        try:
            for channel in plan.config.channels:
                if not channel.enabled:
                    continue
                runner = self._runner(plan, channel)
                server = running.pop(channel.source, None)
                if server is not None:
                    kept[channel.name] = (server, runner)
                else:
                    fresh[channel.name] = await _listen(plan.config, channel, runner)
        except BaseException:
            for server in fresh.values():
                await server.stop()
            raise
        return kept, fresh

    async def _switch(self, plan: Plan, kept: dict[str, tuple[MLLPServer, ChannelRunner]],
                      fresh: dict[str, MLLPServer]) -> None:
        """Commit a reload: nothing here can fail on the configuration any more."""
        for server, runner in kept.values():
            server.runner = runner
        staying = {id(server) for server, _ in kept.values()}
        for server in self.servers.values():
            if id(server) not in staying:
                await server.stop()
        old = self.config
        self.servers = {**{name: server for name, (server, _) in kept.items()}, **fresh}
        self.runners = {name: server.runner for name, server in self.servers.items()}
        self.config = plan.config
        if _destinations(old) != _destinations(plan.config) or old.engine.outbox != plan.config.engine.outbox:
            await self._restart_worker()

    async def _restart_worker(self) -> None:
        assert self.db is not None
        if self.worker is not None:
            await self.worker.stop()
        self.worker = OutboxWorker(self.db, self._routes(), self.config.engine.outbox)
        self.worker.start()

    async def stop(self) -> None:
        """Stop listeners, then the scheduler and worker, then the store."""
        for server in self.servers.values():
            await server.stop()
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self.projector is not None:
            await self.projector.stop()
            self.projector = None
        if self.dicom is not None:
            await asyncio.to_thread(self.dicom.stop)
            self.dicom = None
        if self.receive_pool is not None:  # after the listener: nothing new is handed to them
            await asyncio.to_thread(self.receive_pool.stop)
            self.receive_pool = None
        if self.scheduler is not None:
            if self.scheduler.running:
                self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if self.worker is not None:
            await self.worker.stop()
            self.worker = None
        if self.db is not None:
            await asyncio.to_thread(self.db.close)
            self.db = None


def unbindable_ports(config: Config) -> list[str]:
    """``file:line: field: cannot listen on host:port: reason`` for each fixed port that cannot be bound now.

    A trial bind of every listener's address (as the listeners bind them, with SO_REUSEADDR), so that
    a port taken by another program is reported with all the others before anything starts.
    """
    import socket

    out = []
    for where, host, port, _owner in listeners(config):
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            for family, kind, proto, _name, address in infos:
                with socket.socket(family, kind, proto) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(address)
        except OSError as exc:
            out.append(f"{where}: cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}")
    return out


async def _listen(config: Config, channel: ChannelConfig, runner: ChannelRunner) -> MLLPServer:
    """Start ``channel``'s listener; a port that cannot be bound is a ConfigError at ``source.port``."""
    server = MLLPServer(channel.source, runner)
    try:
        await server.start()
    except OSError as exc:
        src = channel.source
        raise ConfigError([f"{config.channel_where(channel, ('source', 'port'))}: cannot listen on"
                           f" {src.host}:{src.port}: {exc.strerror or exc}"]) from exc
    return server


def _destinations(config: Config) -> list[Any]:
    receivers = (r.mllp_destination() for r in config.engine.reports.receivers)  # ORU^R01 to the EHR(s)
    return [*config.engine.destinations, *(d for c in config.channels for d in c.destinations),
            *(d for d in receivers if d is not None)]


def _routes(config: Config, db: Database) -> dict[str, Route]:
    """Every destination, engine-level and per channel (names checked unique at load); a DICOM
    destination without a host is off and gets no worker."""
    context = DestinationContext(db, config.engine)
    return {d.name: Route(create_destination(d, context), d.retry, d.timeout_seconds)
            for d in _destinations(config) if "" not in (getattr(d, "host", None), getattr(d, "base_url", None))}


def _log_forwarding(config: Config) -> None:
    """Say at start where stored images go, and which DICOM destinations are off."""
    dicom = [d for d in config.engine.destinations if d.type == "dicom"]
    for d in dicom:
        if d.host:
            log.info("images forwarded to %s (%s@%s:%s)", d.name, d.called_ae_title, d.host, d.port)
        else:
            log.info("DICOM destination %s is off: no host (RADBRIDGE_PACS_HOST unset in the shipped"
                     " configuration); stored images are not forwarded to it", d.name)
    if not any(d.host for d in dicom):
        log.info("images are not forwarded: no DICOM destination with a host")


def _log_report_receivers(config: Config) -> None:
    """Say where ORU^R01 goes, and that nothing is sent when no receiver is on."""
    for i, r in enumerate(config.engine.reports.receivers):
        if r.enabled:
            log.info("ORU^R01 out: receiver %s (mapping %s) to %s", r.name, r.mapping, r.mllp or r.destination)
        else:
            log.info("ORU^R01 out: receiver %s is off (reports.receivers[%d]: no mllp address, e.g."
                     " RADBRIDGE_EHR_MLLP unset); reports are kept but not sent", r.name, i)
    if not config.engine.reports.receivers:
        log.info("ORU^R01 out: no receivers configured (reports.receivers); reports are kept but not sent")


def _refuse_restart_changes(old: Config, new: Config) -> None:
    changed = [name for name in RESTART_SECTIONS if getattr(old.engine, name) != getattr(new.engine, name)]
    # The storage service reads its DICOM destinations (and their routes) once, at start.
    if [d for d in old.engine.destinations if d.type == "dicom"] != [
            d for d in new.engine.destinations if d.type == "dicom"]:
        changed.append("destinations")
    if changed:
        raise ConfigError([f"{new.where(new.engine_file, (name,))}: changed, but {name} is read at start only:"
                           " restart radbridge to apply it" for name in changed])


async def _serve(config_dir: Path) -> int:
    config = load_config(config_dir)
    data_dir = config.engine.data_dir
    try:
        prepare_data_dir(data_dir)
        # Before anything listens or opens the store: a live engine on this data directory wins.
        pid_file = PidFile.acquire(data_dir / "radbridge.pid")
    except OSError as exc:  # one located line: the path and the system's reason, not a traceback
        where = config.where(config.engine_file, ("data_dir",))
        raise ConfigError([f"{where}: cannot use {data_dir}: {exc.strerror or type(exc).__name__}"]) from None
    try:
        return await _serve_locked(config, config_dir, pid_file)
    finally:
        pid_file.release()


async def _serve_locked(config: Config, config_dir: Path, pid_file: PidFile) -> int:
    runtime = Runtime(config)
    # Before the first listener opens: a SIGTERM while the engine starts (its DICOM listener and receive
    # workers are up before the rest) is a stop once the start is complete, not the signal's default
    # action, which would end the process without closing anything.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    if stop.is_set():
        log.info("radbridge asked to stop while it started")
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(runtime, config_dir)))
    # Only now: whoever reads the pid (``radbridge reload``) may send SIGHUP, whose default
    # action would end the process.
    runtime.publish_serving()
    pid_file.publish()
    log.info("radbridge running: %d channel(s)", len(runtime.servers))
    await stop.wait()
    log.info("radbridge stopping")
    await runtime.stop()
    remove_serving(Path(config.engine.data_dir))
    log.info("radbridge stopped")  # listeners closed, receive workers ended, queued writes committed
    return 0


async def _reload(runtime: Runtime, config_dir: Path) -> None:
    """SIGHUP: apply the new configuration if all of it is valid and can be bound; else keep the running one."""
    try:
        await runtime.reload(check_directory(config_dir).config)  # every file's problems, as run lists them
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration:\n%s", exc)
        return
    except Exception:  # never let a reload take the engine down
        log.exception("reload failed, keeping the running configuration")
        return
    log.info("configuration valid; reloaded %d channel(s)", len(runtime.servers))


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
    ``RADBRIDGE_EVENT_LOOP=asyncio``); 1 if another engine already runs on the data directory.

    The process umask becomes 077 first: every file it creates is owner-only (engine.datadir).
    """
    os.umask(PROCESS_UMASK)
    try:
        return _run_loop(config_dir)
    except AlreadyRunning as exc:
        log.error("refusing to start: %s", exc)
        return 1
    except ConfigError:
        raise  # the CLI lists its problems
    except Exception:  # through the log's formatter, not Python's raw traceback on stderr
        log.critical("radbridge stopped by an unexpected error", exc_info=True)
        return 1


def _run_loop(config_dir: Path) -> int:
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
