"""``radbridge clients add|list|remove``: the clients that may ask for access tokens (audited).

Every command is recorded (:mod:`engine.audit`) with the operator's OS account as
actor, in the transaction that makes the change: ``client.add``, ``client.list``,
``client.remove`` (object ``client``/client id). ``add`` prints the client id and,
for ``--secret``, the secret: the only time it is shown, as only its hash is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from engine.audit import Actor, record
from engine.auth.clients import InvalidRegistration, Registered, add_client, list_clients, remove_client

if TYPE_CHECKING:
    from engine.store.database import Database

__all__ = ["add_subcommands", "audited_add", "audited_list", "audited_remove"]


def _add_and_record(conn: Connection, name: str, scopes: list[str], jwks: str | None,
                    actor: Actor | None) -> Registered:
    registered = add_client(conn, name, scopes, jwks)
    client = registered.client
    record(conn, "client.add", "client", client.client_id,
           {"name": name, "auth_method": client.auth_method, "scopes": list(client.scopes)}, actor)
    return registered


def audited_add(db: Database, name: str, scopes: list[str], jwks: str | None,
                actor: Actor | None = None) -> Registered:
    """Register a client (``jwks``: private_key_jwt, else a new secret), recorded as ``client.add``."""
    return db.writer.call(partial(_add_and_record, name=name, scopes=scopes, jwks=jwks, actor=actor))


def _list_and_record(conn: Connection, actor: Actor | None) -> list[dict[str, Any]]:
    rows = [c.public_listing() for c in list_clients(conn)]
    record(conn, "client.list", "client", "", {"client_ids": [r["client_id"] for r in rows]}, actor)
    return rows


def audited_list(db: Database, actor: Actor | None = None) -> list[dict[str, Any]]:
    """Every client without secrets, recorded as ``client.list``."""
    return db.writer.call(partial(_list_and_record, actor=actor))


def _remove_and_record(conn: Connection, name: str, actor: Actor | None) -> str | None:
    client = remove_client(conn, name)
    if client is None:
        return None
    record(conn, "client.remove", "client", client.client_id, {"name": name}, actor)
    return client.client_id


def audited_remove(db: Database, name: str, actor: Actor | None = None) -> str | None:
    """Remove the client ``name``, recorded as ``client.remove``; its client id, or None if unknown."""
    return db.writer.call(partial(_remove_and_record, name=name, actor=actor))


def cmd_add(args: argparse.Namespace, db: Database) -> int:
    """``clients add NAME --scope S... (--jwks FILE | --secret)``; 1 if the registration is refused."""
    try:
        jwks = Path(args.jwks).read_text(encoding="utf-8") if args.jwks else None
        registered = audited_add(db, args.name, args.scope, jwks)
    except (OSError, InvalidRegistration) as exc:
        print(f"radbridge clients add: {exc}", file=sys.stderr)
        return 1
    out = {**registered.client.public_listing()}
    if registered.secret is not None:
        out["client_secret"] = registered.secret
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print("\n".join(f"{k}: {' '.join(v) if isinstance(v, list) else v}" for k, v in out.items() if v))
    if registered.secret is not None:
        print("the client secret is shown only now: give it to the client's operator over a secure channel",
              file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace, db: Database) -> int:
    """``clients list``."""
    rows = audited_list(db)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    lines = ["name\tclient_id\tauth_method\tscopes"]
    lines += [f"{r['name']}\t{r['client_id']}\t{r['auth_method']}\t{' '.join(r['scopes'])}" for r in rows]
    print("\n".join(lines))
    return 0


def cmd_remove(args: argparse.Namespace, db: Database) -> int:
    """``clients remove NAME``; 1 if there is no such client."""
    client_id = audited_remove(db, args.name)
    if client_id is None:
        print(f"no client named {args.name}", file=sys.stderr)
        return 1
    print(f"removed client {args.name} ({client_id}); tokens it holds expire within their lifetime")
    return 0


def add_subcommands(sub: Any, database: Any) -> None:
    """Register ``clients add|list|remove``; ``database(args)`` opens the configured database."""
    cmds = sub.add_parser("clients", help="API clients allowed to request access tokens (audited)").add_subparsers(
        dest="clients_command", required=True, metavar="ACTION")
    add = cmds.add_parser("add", help="register a client and print its credentials")
    add.add_argument("name", metavar="NAME", help="a label for the client (letters, digits, _ . -)")
    add.add_argument("--scope", nargs="+", required=True, metavar="S",
                     help="SMART system scopes it may be granted, e.g. system/ImagingStudy.rs system/*.read")
    how = add.add_mutually_exclusive_group(required=True)
    how.add_argument("--jwks", metavar="FILE", help="its public JWKS (private_key_jwt with RS384 or ES384)")
    how.add_argument("--secret", action="store_true", help="generate a client secret (shown once)")
    add.add_argument("--json", action="store_true", help="print JSON")
    # A client may be registered before the first `radbridge run`: the one command besides run that creates the store.
    add.set_defaults(fn=lambda args: cmd_add(args, database(args)), creates_store=True)
    lst = cmds.add_parser("list", help="registered clients (no secrets)")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(fn=lambda args: cmd_list(args, database(args)))
    rm = cmds.add_parser("remove", help="remove a client: it gets no new tokens")
    rm.add_argument("name", metavar="NAME", help="the client's name")
    rm.set_defaults(fn=lambda args: cmd_remove(args, database(args)))
