"""radbridge: run the engine, check configuration, send, inspect and replay messages."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.cli.text import visible
from engine.config import Config, load_config
from engine.errors import ConfigError, SchemaMismatch, StoreMissing

__all__ = ["main"]

Command = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config))


def _database(args: argparse.Namespace) -> Any:
    """The configured database, its schema at this code's revision; never migrated here.

    Only commands whose parser sets ``creates_store`` (``clients add``, ``db upgrade``) may
    create a missing SQLite database and its directory; every other command raises
    StoreMissing instead, so looking never leaves a data directory behind (``radbridge run``
    creates it, 0700). A new, empty store is created at this code's revision by such a
    command; any other schema not at it raises SchemaMismatch: only ``radbridge run`` and
    ``radbridge db upgrade`` upgrade a schema.
    """
    from engine.store.migrate import require_current, schema_state

    db = _open_database(args)
    try:
        state = db.read(schema_state)
        if state.current is None and getattr(args, "creates_store", False):
            db.migrate()
        else:
            require_current(state)
    except BaseException:
        db.close()
        raise
    return db


def _open_database(args: argparse.Namespace) -> Any:
    """The configured database as it is (no schema check): StoreMissing unless the command creates it."""
    from engine.store.database import Database

    cfg = _config(args).engine
    if not getattr(args, "creates_store", False):
        _require_store(cfg.database_url(), Path(cfg.data_dir))
    return Database(cfg.database_url(), cfg.database.sqlite_synchronous,
                    sqlite_page_size=cfg.database.sqlite_page_size, application_name="radbridge cli",
                    answer_timeout=cfg.database.answer_timeout_seconds)


def _require_store(url: str, data_dir: Path) -> None:
    """Raise StoreMissing when ``url`` is a SQLite file that does not exist (or its directory does not)."""
    from sqlalchemy.engine import make_url

    from engine.store.database import masked_url

    masked_url(url)  # a URL that is none: the ConfigError Database would raise
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database).expanduser()
    create = "`radbridge run` (or `make run`) creates it, mode 0700, with its database"
    if not path.parent.is_dir():
        what = "the data directory" if path.parent == data_dir else "the database's directory"
        raise StoreMissing(f"{what} {path.parent} does not exist: {create}")
    if not path.exists():
        raise StoreMissing(f"no database {path.name} in {path.parent}: `radbridge run` (or `make run`) creates it")


def _print(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text(data))


def cmd_run(args: argparse.Namespace) -> int:
    from engine.logs import configure_logging
    from engine.plan import check_directory
    from engine.runtime import run

    cfg = check_directory(Path(args.config)).config  # every problem of every file, before anything starts
    configure_logging(cfg.engine.logging.level, cfg.engine.logging.format)
    return run(Path(args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    from engine.plan import check_directory

    cfg = check_directory(Path(args.config)).config
    print(f"configuration OK: {len(cfg.channels)} channel(s) in {args.config}")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from engine.cli.send import send_files

    return send_files(args.target, [Path(f) for f in args.files], args.timeout)


def cmd_reload(args: argparse.Namespace) -> int:
    from engine.pidfile import running_pid
    from engine.plan import check_directory

    # Every problem of every file, as check-config and run find them (handlers, mappings, ports two channels
    # share), before the engine is signalled: an invalid configuration is exit status 2 and no SIGHUP.
    pid_file = check_directory(Path(args.config)).config.engine.data_dir / "radbridge.pid"
    pid = running_pid(pid_file)
    if pid is None:  # the lock says so: a pid left in the file may now be another process's
        print(f"radbridge reload: no running engine for {pid_file.parent} (no engine holds {pid_file})",
              file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGHUP)
    print(f"sent SIGHUP to {pid}; the engine logs whether the new configuration was applied")
    return 0


def cmd_messages_list(args: argparse.Namespace) -> int:
    from engine.cli.queries import MessageFilter, audited_list

    f = MessageFilter(args.channel, args.status, _time(args.since), _time(args.until), args.control_id,
                      args.patient_id, args.accession, args.type, args.limit)
    rows = audited_list(_database(args), f)
    _print(rows, args.json, _table)
    return 0


def cmd_messages_show(args: argparse.Namespace) -> int:
    from engine.cli.queries import audited_detail

    detail = audited_detail(_database(args), args.id)
    if detail is None:
        print(f"no message {args.id}", file=sys.stderr)
        return 1
    _print(detail, args.json, lambda d: visible(_detail_text(d)))
    return 0


def cmd_messages_replay(args: argparse.Namespace) -> int:
    from engine.cli.replay import replay_messages

    return replay_messages(_config(args), _database(args), args.ids)


def cmd_messages_ack(args: argparse.Namespace) -> int:
    from functools import partial

    from engine.cli.acknowledge import acknowledge

    if bool(args.ids) == (args.all_before is not None) or (args.channel is not None and args.ids):
        print("radbridge messages ack: name the message ids (radbridge messages list --status ERROR) or"
              " --all-before TIME [--channel NAME], not both", file=sys.stderr)
        return 2
    done = _database(args).writer.call(partial(acknowledge, ids=args.ids, before=_time(args.all_before),
                                               channel=args.channel, now=datetime.now(UTC)))
    for reason in done.reasons:
        print(reason, file=sys.stderr)
    # "0 message(s) acknowledged: radbridge status no longer counts them" read as if something had been done.
    print(f"{len(done.ids)} message(s) acknowledged" + (": radbridge status no longer counts them under needs"
          " attention (messages list still lists them; a replay clears the acknowledgement)" if done.ids else ""))
    return 0 if done.ids or (not args.ids and not done.reasons) else 1


def cmd_status(args: argparse.Namespace) -> int:
    from engine.cli.queries import empty_counts, engine_status
    from engine.cli.status_view import archive_space, attention, configured, destination_backlog
    from engine.store.database import unavailable

    config = _config(args)
    try:
        db = _database(args)
        data = db.read(engine_status)
    except Exception as exc:
        if not unavailable(exc):
            raise
        # The database is away (refused, lost, hung past connect_timeout, pool exhausted): what is known
        # without it, and that it is away.
        return _status_without_database(args, configured(config), exc)
    data |= configured(config)
    # Where each ORU^R01 receiver sends: the running engine's targets (its environment), as the destination table.
    data["reports"]["receivers"] = {r.name: data["destination_targets"].get(r.name, r.mllp or r.destination or "off")
                                    for r in config.engine.reports.receivers}
    data["destinations"] = {name: {"target": target, "queued": 0, "oldest_queued_seconds": None, "dead_letters": 0}
                            for name, target in data.pop("destination_targets").items()}
    for name, backlog in db.read(destination_backlog).items():
        data["destinations"].setdefault(name, {"target": _UNLISTED_TARGETS.get(name, "not configured")}).update(backlog)
    data["archive_space"] = archive_space(data["archive_space"])
    for name, listener in data.pop("listeners").items():  # every configured channel, even one with no message yet
        data["channels"].setdefault(name, empty_counts()).update(listener)
    data["attention"] = attention(data)
    _print(data, args.json, _status_text)
    return 0


def _status_without_database(args: argparse.Namespace, known: dict[str, Any], exc: Exception) -> int:
    """``status`` when the database cannot be reached: the engine process, its listeners, and the
    database's error in "needs attention" (and on stderr, in the one line every command gives); exit
    status 1 (a script checking the engine sees the outage)."""
    from engine.cli.status_view import endpoints_text

    error = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    data = {key: known[key] for key in ("engine", "dicom", "fhir")}
    data["channels"] = {name: {"listen": listener["listen"]} for name, listener in sorted(known["listeners"].items())}
    data["database"] = {"reachable": False, "error": error}
    effect = ("; no message or image can be stored (they are refused: AE, 0xA700) until it is back, then the"
              " engine goes on by itself"
              if data["engine"]["running"] else "")
    data["attention"] = [f"database: cannot be reached ({error}){effect}"]
    listeners = ["channel\tlisten", *(f"{name}\t{c['listen']}" for name, c in data["channels"].items())]
    _print(data, args.json, lambda d: "\n".join([*endpoints_text(d), "", *listeners, "", "needs attention:",
                                                  *d["attention"]]))
    print(f"radbridge status: cannot use the database: {error}", file=sys.stderr)  # as every other command
    return 1


def cmd_schema(args: argparse.Namespace) -> int:
    from engine.config.models import ChannelConfig, EngineConfig

    model = ChannelConfig if args.kind == "channel" else EngineConfig
    print(json.dumps(model.model_json_schema(by_alias=True), indent=2))
    return 0


def _time(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso_time(value: str) -> datetime:
    """argparse type of ``--since``/``--until``: a usage error (one line), not a traceback."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time, e.g. 2026-11-22T08:00") from None


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["id", "channel", "received_at", "status", "message_type", "control_id", "patient_id",
            "accession_number", "ack_code", "error_location", "acknowledged_at"]
    lines = ["\t".join(cols)]
    lines += ["\t".join(visible(_acknowledged(r) if c == "acknowledged_at" else str(r.get(c) or "")) for c in cols)
              for r in rows]
    return "\n".join(lines)


def _acknowledged(d: dict[str, Any]) -> str:
    """``acknowledged_at`` as an operator reads it: when, "not acknowledged" for a message answered AE/AR that
    ``status`` still counts, "" for any other (there is nothing to acknowledge)."""
    if d.get("acknowledged_at"):
        return str(d["acknowledged_at"])
    return "not acknowledged" if d.get("status") in ("ERROR", "REJECTED") else ""


def _detail_text(d: dict[str, Any]) -> str:
    # a value the message does not have (None: never acknowledged, never resent) is left out, not printed "None"
    shown = {k: _acknowledged(d) if k == "acknowledged_at" else d[k] for k in d
             if k not in ("raw", "text", "ack", "stages", "deliveries", "attempts")}
    head = [f"{k}: {v}" for k, v in shown.items() if v is not None and not (k == "acknowledged_at" and v == "")]
    # A frame never read as HL7 (bytes between frames, a frame cut off by a closed connection) has
    # no decoded text: its bytes as received are what there is to inspect.
    unread = not d["text"] and d["raw"]
    message = ["message (bytes as received, not read as HL7):", d["raw"]] if unread else ["message:", d["text"]]
    body = ["", message[0], message[1].replace("\r", "\n"), "ack:", d["ack"].replace("\r", "\n")]
    stages = [f"stage {s['stage']} {s['status']} {s['error']}\n{s['content']}" for s in d["stages"]]
    deliveries = [f"delivery {x['id']} -> {x['destination']}: {x['status']} attempts={x['attempts']} "
                  f"{x['last_error']}" for x in d["deliveries"]]
    tried = [f"attempt {a['attempt']} {a['at']} {a['via']} by {a['actor']}: {a['status']} {a['ack_code']}"
             + "".join(f" {v}" for v in (a["error_code"], a["error_location"], a["error"]) if v)
             for a in d["attempts"]]
    return "\n".join(head + body + stages + deliveries + tried)


#: Outbox destinations of the engine's own making (not named in a configuration file).
_UNLISTED_TARGETS = {"archive:secondary": "the second archive copy (archive.secondary)"}


def _cell(value: Any) -> str:
    """A value of the status tables: ``-`` for none (nothing queued, a job never run), not Python's ``None``."""
    return "-" if value is None else str(value)


def _status_text(data: dict[str, Any]) -> str:
    from engine.cli.status_view import archive_space_text, endpoints_text

    cols = ["listen", "received", "errors", "filtered", "unchanged", "queued", "delivery_errors",
            "oldest_queued_seconds"]
    lines = [*endpoints_text(data), "", "channel\t" + "\t".join(cols)]
    lines += [name + "\t" + "\t".join(_cell(v.get(c, "not configured")) for c in cols)
              for name, v in sorted(data["channels"].items())]
    dcols = ["target", "queued", "oldest_queued_seconds", "dead_letters"]
    lines += ["", "destination\t" + "\t".join(dcols)]
    lines += [name + "\t" + "\t".join(_cell(v.get(c, "")) for c in dcols)
              for name, v in sorted(data["destinations"].items())]
    lines += ["", "job\tlast run\tresult\truns\terror"]
    lines += ["\t".join([j, *(_cell(v[k]) for k in ("last_run_at", "last_result", "runs", "last_error"))])
              for j, v in sorted(data["jobs"].items())]
    steps = ", ".join(f"{k} {v}" for k, v in sorted(data["worklist_steps"].items())) or "none"
    reports = data["reports"]
    receivers = ", ".join(f"{k} {v}" for k, v in reports["receivers"].items()) or "none configured"
    st = data.get("studies", {})
    # Of studies with stored images only (study_counts): "studies: 1 scheduled" beside a `studies list` of two
    # scheduled studies (one known from MPPS alone) read as a miscount.
    studies = (f"studies with stored images: {st.get('scheduled', 0)} scheduled, {st.get('unscheduled', 0)}"
               " unscheduled;"
               f" images refused and quarantined: {_quarantined_text(data.get('images', {}))}")
    studies += "; " + _reconcile_text(data.get("reconcile", {}))
    space = [archive_space_text(data["archive_space"])] if data.get("archive_space") else []
    return "\n".join([*lines, "", f"worklist steps: {steps}", studies, *space,
                      f"reports waiting for their order: {reports['waiting_for_order']}",
                      f"ORU^R01 out: {receivers}", "",
                      "needs attention:" + ("" if data["attention"] else " nothing"), *data["attention"]])


def _reconcile_text(pending: dict[str, Any]) -> str:
    """The job reconcile-images's backlog: late orders' unscheduled studies and patients' images to correct."""
    oldest = pending.get("oldest_pending_seconds")
    return f"image reconciliations pending: {pending.get('pending', 0)}" + (f" (oldest {oldest} s)" if oldest else "")


def _quarantined_text(images: dict[str, int]) -> str:
    """All quarantined C-STORE requests, and those of the last 24 hours (the ones under "needs attention")."""
    text = f"{images.get('quarantined', 0)} ({images.get('quarantined_last_24h', 0)} in the last 24 hours"
    failed = images.get("failed_last_24h", 0)
    return text + (f", {failed} of them processing failures)" if failed else ")")


_CONFIG_HELP = "configuration directory (default $RADBRIDGE_CONFIG or ./config)"
_JSON_HELP = "print JSON instead of a table"


#: What every command's exit status means (``radbridge --help``; README "Operations", docs/operations.md).
EXIT_STATUSES = ("exit status: 0 done; 1 the command ran but found something wrong or unknown (an id not"
                 " found, a replay still refused, a damaged archive copy, a mapping problem, the database"
                 " unreachable); 2 a usage error or an invalid configuration file. What to do when"
                 " something goes wrong: docs/operations.md")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radbridge", description=__doc__, epilog=EXIT_STATUSES)
    p.add_argument("--config", default=os.environ.get("RADBRIDGE_CONFIG", "./config"), help=_CONFIG_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run every configured channel").set_defaults(fn=cmd_run)
    sub.add_parser("check-config", help="validate configuration, mappings and every name they refer to"
                   ).set_defaults(fn=cmd_check_config)
    sub.add_parser("reload", help="ask the running engine to reload (SIGHUP)").set_defaults(fn=cmd_reload)
    send = sub.add_parser("send", help="send HL7 files over MLLP and print each ACK code")
    send.add_argument("target", metavar="HOST:PORT", help="the MLLP listener to send to")
    send.add_argument("files", nargs="+", metavar="FILE", help="one HL7 message per file (CR, LF or CRLF)")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each ACK (default 30)")
    send.set_defaults(fn=cmd_send)
    _messages(sub)
    _orders(sub)
    _studies(sub)
    _clients(sub)
    _archive(sub)
    _outbox(sub)
    _db(sub)
    status = sub.add_parser("status", help="whether the engine runs, counts, backlog and what needs attention")
    status.add_argument("--json", action="store_true", help=_JSON_HELP)
    status.set_defaults(fn=cmd_status)
    schema = sub.add_parser("schema", help="print the JSON Schema of a configuration file")
    schema.add_argument("kind", choices=["channel", "engine"], help="which file: a channel or engine.yaml")
    schema.set_defaults(fn=cmd_schema)
    _mapping(sub)
    _config_everywhere(p)
    return p


_TYPED_FILTERS = {"since": _iso_time, "until": _iso_time}
#: The statuses a stored message can have (README, "Message statuses").
_MESSAGE_STATUSES = ("PROCESSED", "FILTERED", "UNCHANGED", "ERROR", "REJECTED")
_LIST_FILTERS = {
    "channel": "only this channel",
    "status": "only this status (any case)",
    "since": "received at or after this ISO 8601 time (UTC when no offset)",
    "until": "received before this ISO 8601 time (UTC when no offset)",
    "control-id": "only this message control id (MSH-10)",
    "patient-id": "only messages about this patient id",
    "accession": "only messages about this accession number",
    "type": "only this message type, * as wildcard (ORM^*)",
}


def _messages(sub: Any) -> None:
    msgs = sub.add_parser("messages", help="inspect and replay stored messages").add_subparsers(
        dest="messages_command", required=True, metavar="ACTION")
    lst = msgs.add_parser("list", help="list messages, newest first")
    for flag, text in _LIST_FILTERS.items():
        if flag == "status":  # a mistyped status must not read as "none of those"
            lst.add_argument("--status", help=text, type=str.upper, choices=_MESSAGE_STATUSES)
            continue
        lst.add_argument(f"--{flag}", help=text, type=_TYPED_FILTERS.get(flag, str))
    lst.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    lst.add_argument("--json", action="store_true", help=_JSON_HELP)
    lst.set_defaults(fn=cmd_messages_list)
    show = msgs.add_parser("show", help="one message with every stage (audited)")
    show.add_argument("id", type=int, help="message id, as listed by messages list")
    show.add_argument("--json", action="store_true", help="print JSON, every byte exact")
    show.set_defaults(fn=cmd_messages_show)
    replay = msgs.add_parser("replay", help="reprocess ERROR/REJECTED messages in place (same id, audited) "
                             "with the current configuration; re-queue failed deliveries")
    replay.add_argument("ids", type=int, nargs="+", metavar="ID", help="message ids to replay")
    replay.set_defaults(fn=cmd_messages_replay)
    ack = msgs.add_parser("ack", help="acknowledge messages answered AE/AR once dealt with: status no longer"
                          " counts them under needs attention (kept, audited)")
    ack.add_argument("ids", type=int, nargs="*", metavar="ID", help="message ids to acknowledge")
    ack.add_argument("--all-before", type=_iso_time, metavar="TIME",
                     help="every AE/AR message received before TIME (ISO 8601, UTC unless it has an offset)")
    ack.add_argument("--channel", help="with --all-before: only this channel's")
    ack.set_defaults(fn=cmd_messages_ack)


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser``, at any depth."""
    # argparse has no public walk of its tree; the subparsers action is the documented container.
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *_subparsers(child)]
    return found


def _config_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept ``--config DIR`` after any subcommand too (``radbridge run --config DIR``).

    SUPPRESS keeps a subcommand from resetting a value given before it.
    """
    for child in _subparsers(parser):
        if "--config" not in child._option_string_actions:
            child.add_argument("--config", default=argparse.SUPPRESS, help=_CONFIG_HELP)


def _outbox(sub: Any) -> None:
    from engine.cli.outbox import add_subcommands

    add_subcommands(sub, _database)


def _orders(sub: Any) -> None:
    from engine.cli.orders import add_subcommands

    add_subcommands(sub, _database)


def _studies(sub: Any) -> None:
    from engine.cli.studies import add_subcommands

    add_subcommands(sub, _database)


def _clients(sub: Any) -> None:
    from engine.cli.clients import add_subcommands

    add_subcommands(sub, _database)


def _archive(sub: Any) -> None:
    from engine.cli.archive import add_subcommands

    add_subcommands(sub, _database)


def _db(sub: Any) -> None:
    from engine.cli.db import add_subcommands

    add_subcommands(sub, _open_database, _config)


def _mapping(sub: Any) -> None:
    try:
        from engine.mapping.cli import add_subcommands
    except ModuleNotFoundError:
        return
    add_subcommands(sub)


def _command_name(args: argparse.Namespace) -> str:
    """``status``, ``messages list``: the command as typed (each group's action is ``<group>_command``)."""
    action = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {action}" if action else str(args.command)


#: The exit status when the reader of the output went away: what a shell reports for a Unix tool that
#: SIGPIPE ended (``radbridge`` keeps Python's ignored SIGPIPE: it must not kill ``send`` or ``run``).
CLOSED_PIPE = 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``radbridge`` console script.

    A reader that stops early (``radbridge status | head -3``) ends the command quietly with
    :data:`CLOSED_PIPE`, like a Unix tool: no traceback, no "Exception ignored" at exit.
    """
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # now, not at interpreter exit, where a closed pipe cannot be caught
    except BrokenPipeError:
        _discard_output()
        return CLOSED_PIPE


def _discard_output() -> None:
    """Point stdout and stderr at /dev/null: what is still buffered for a gone reader is dropped."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    from sqlalchemy.exc import OperationalError

    from engine.logs import configure_logging

    configure_logging("WARNING")  # what a command logs (replay runs a channel) is PHI-safe too; run sets its own
    try:
        fn: Command = args.fn
        return fn(args)
    except ConfigError as exc:
        print("configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except (StoreMissing, SchemaMismatch) as exc:
        print(f"radbridge {_command_name(args)}: {exc}", file=sys.stderr)
        return 1
    except OperationalError as exc:  # the database is not reachable: say so in one line
        first = str(exc.orig or exc).strip().splitlines()[0]
        print(f"radbridge {_command_name(args)}: cannot use the database: {first}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
