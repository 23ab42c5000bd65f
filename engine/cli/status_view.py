"""What ``radbridge status`` adds to the database counts: where things listen, the backlog per
destination, whether the engine runs, and a plain list of what needs attention.

The listening addresses are those the running engine reported (engine.serving), else the
configuration's (what ``radbridge run`` would bind with this shell's configuration and environment;
port 0, a free port chosen at start, is shown as such).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select

from engine.archive.spool_budget import free_bytes
from engine.config import Config
from engine.outbox.queue import QUEUED
from engine.pidfile import running_pid
from engine.serving import endpoints, read_serving
from engine.store.schema import outbox

__all__ = ["archive_space", "archive_space_text", "attention", "configured", "destination_backlog", "endpoints_text"]


def configured(config: Config) -> dict[str, Any]:
    """The engine, DICOM listener, FHIR API, channel listeners and destinations: as the running engine
    reported them (engine.serving: its environment and bound ports, which this shell may not share),
    else as ``config`` says (``source`` tells which)."""
    eng = config.engine
    pid = running_pid(Path(eng.data_dir) / "radbridge.pid")
    served = read_serving(Path(eng.data_dir), pid)
    keys = ("dicom", "fhir", "listeners", "destination_targets", "archive_space")
    shown = {k: served[k] for k in keys if k in served} if served else None
    return {"engine": {"running": pid is not None, "pid": pid, "data_dir": str(eng.data_dir),
                       "source": "running engine" if shown else "configuration"},
            **endpoints(config), **(shown or {})}


def archive_space(where: dict[str, Any] | None) -> dict[str, Any] | None:
    """The free space of the archive's file system (``where``: its directory and archive.min_free_bytes, from
    :func:`configured`) now; ``free_bytes`` None when it cannot be asked (the directory does not exist yet)."""
    if where is None:
        return None
    try:
        free: int | None = free_bytes(Path(where["directory"]))
    except OSError:
        free = None
    return {**where, "free_bytes": free}


def destination_backlog(conn: Connection, now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Per destination: deliveries queued, the oldest one's age in seconds, and dead letters (ERROR)."""
    now = now or datetime.now(UTC)
    out: dict[str, dict[str, Any]] = {}
    rows = conn.execute(select(outbox.c.destination, outbox.c.status, func.count(), func.min(outbox.c.created_at))
                        .where(outbox.c.status.in_([QUEUED, "ERROR"]))
                        .group_by(outbox.c.destination, outbox.c.status))
    for name, status, count, oldest in rows:
        entry = out.setdefault(name, {"queued": 0, "oldest_queued_seconds": None, "dead_letters": 0})
        if status == QUEUED:
            at = oldest.replace(tzinfo=UTC) if oldest.tzinfo is None else oldest
            entry["queued"], entry["oldest_queued_seconds"] = count, round((now - at).total_seconds(), 1)
        else:
            entry["dead_letters"] = count
    return out


#: A request of the job reconcile-images older than this (it runs every few seconds) needs a look.
RECONCILE_LATE_SECONDS = 3600
#: With archive.min_free_bytes 0 (no reserve), less than this free on the archive's file system needs a look.
NEARLY_FULL_BYTES = 64 << 20
#: A delivery still queued this long after it was queued (its destination down or refusing) needs a look.
BACKLOG_LATE_SECONDS = 3600


def attention(data: dict[str, Any]) -> list[str]:
    """One line per thing an analyst should look at, each with the command that shows it."""
    out = []
    engine = data.get("engine")
    if engine is not None and not engine["running"]:  # the first thing to know at 3 a.m.
        out.append(f"engine: not running (no live pid file in {engine['data_dir']}): nothing is received, stored or"
                   " forwarded; start it (radbridge run, or its service); the end of its log says why it stopped")
    for name, ch in sorted(data["channels"].items()):
        open_errors = ch["errors"] - ch.get("errors_acknowledged", 0)
        if open_errors > 0:
            newest = ch.get("newest_error_seconds")
            age = f", the newest {_age(newest)} ago" if newest is not None else ""
            out.append(f"channel {name}: {open_errors} message(s) answered AE/AR{age}:"
                       f" radbridge messages list --channel {name} --status ERROR (or REJECTED); once dealt with:"
                       f" radbridge messages ack ID, or --all-before TIME --channel {name}")
    for name, d in sorted(data.get("destinations", {}).items()):
        if d["dead_letters"]:
            out.append(f"destination {name}: {d['dead_letters']} dead letter(s):"
                       f" radbridge outbox list --destination {name} --status ERROR;"
                       f" once the cause is fixed: radbridge outbox replay --destination {name}")
        oldest = d.get("oldest_queued_seconds") or 0
        if oldest > BACKLOG_LATE_SECONDS:  # a peer down or refusing for long (the PACS, the second archive copy)
            out.append(f"destination {name}: {d['queued']} delivery(ies) waiting, the oldest for {oldest / 3600:.1f} h"
                       f" (the last error says why): radbridge outbox list --destination {name} --status QUEUED")
    space = data.get("archive_space")
    free = space["free_bytes"] if space else None
    if space and free is not None and free < space["min_free_bytes"]:
        out.append(f"archive: {space['directory']} has {_size(free)} free, less than"
                   f" archive.min_free_bytes ({_size(space['min_free_bytes'])}): every new image is refused"
                   " (0xA700); free space on that file system or move archive.primary (docs/operations.md)")
    elif space and free is not None and not space["min_free_bytes"] and free < NEARLY_FULL_BYTES:
        out.append(f"archive: {space['directory']} has {_size(free)} free and no reserve (archive.min_free_bytes"
                   " 0): images that do not fit fail (0xA700, ENOSPC in the log); free space on that file system"
                   " (docs/operations.md)")
    out += _image_attention(data.get("images", {}))
    bad = data.get("archive_copies", {})
    if bad.get("missing") or bad.get("damaged"):
        out.append(f"archive: {bad.get('missing', 0)} stored copy(ies) missing and {bad.get('damaged', 0)} damaged"
                   " when last checked: radbridge archive verify, then radbridge archive restore")
    pending = data.get("reconcile", {})
    if (pending.get("oldest_pending_seconds") or 0) > RECONCILE_LATE_SECONDS:
        out.append(f"images: {pending['pending']} reconciliation/correction request(s) pending, the oldest for"
                   f" {pending['oldest_pending_seconds'] / 3600:.1f} h: see the job reconcile-images below and the log")
    for job, j in sorted(data["jobs"].items()):
        if j["last_error"]:
            out.append(f"job {job}: last run failed: {j['last_error']}")
    return out


def _age(seconds: float) -> str:
    """``40 s``, ``12 min``, ``3.5 h``, ``12 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def archive_space_text(space: dict[str, Any]) -> str:
    """The status line of the archive's file system."""
    free = ("free space unknown (not created yet)" if space["free_bytes"] is None
            else f"{_size(space['free_bytes'])} free")
    if not space["min_free_bytes"]:
        return f"archive: {space['directory']}, {free}; no reserve (archive.min_free_bytes 0)"
    return (f"archive: {space['directory']}, {free}; new images are refused below"
            f" {_size(space['min_free_bytes'])} (archive.min_free_bytes)")


def _size(count: int) -> str:
    """Bytes for a person: ``7.9 MiB``, ``1.0 GiB``."""
    value, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"


def _image_attention(images: dict[str, int]) -> list[str]:
    """C-STORE requests quarantined in the last 24 hours (engine.cli.queries.RECENT_REFUSALS): the sender's
    refusals, and the processing failures (0xC211), which are radbridge's own. Older ones are only counted."""
    failed = images.get("failed_last_24h", 0)
    refused = images.get("quarantined_last_24h", 0) - failed
    where = "archive.quarantine; sender, UIDs, status and reason in the table quarantined_instances"
    out = []
    if refused:
        out.append(f"images: {refused} C-STORE(s) refused in the last 24 hours and kept in quarantine ({where})")
    if failed:
        out.append(f"images: {failed} C-STORE(s) failed in the storage service (0xC211) in the last 24 hours"
                   f" and kept in quarantine; the log has the error ({where})")
    return out


def endpoints_text(data: dict[str, Any]) -> list[str]:
    """The lines above the tables: engine, DICOM AE, FHIR API."""
    eng = data["engine"]
    running = f"running (pid {eng['pid']})" if eng["running"] else "not running"
    if eng["running"] and eng.get("source") == "configuration":  # an engine older than the serving file
        running += "; the addresses below are this shell's configuration, not what the engine bound"
    dicom = data["dicom"]
    dicom_line = (f"DICOM: AE title {dicom['ae_title']} on {dicom['listen']}{' (TLS)' if dicom['tls'] else ''}"
                  f"; {_workers(dicom['receive_processes'])}" if dicom else "DICOM: off")
    fhir = data["fhir"]
    fhir_line = f"FHIR API: {fhir['url']} (auth: {fhir['auth']})" if fhir else "FHIR API: off"
    return [f"engine: {running}, data directory {eng['data_dir']}", dicom_line, fhir_line]


def _workers(count: int) -> str:
    """Where DICOM associations run (dicom.receive_processes), as ``ps`` will show it while running."""
    return f"associations in {count} receive worker process(es)" if count else "associations in the engine process"
