"""``radbridge archive verify|restore``: fixity of both storage locations, and repair.

``verify`` re-reads every copy in scope, of the current versions and of the old
versions kept as history, and prints each problem with the version's number (exit 1
when there is any, 0 when every copy is intact). ``restore`` rebuilds each missing or
damaged copy, current or old, from the other location, verifying it (exit 1 when a
copy could not be rebuilt). ``--study`` naming no stored instance is exit 1 too. Both
print SOP Instance UIDs and locations only: no patient data.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from engine.archive.archive import Archive, archive_from_config, instances_of
from engine.archive.fixity import Finding, Repair, restore, verify
from engine.archive.history import restore_history, verify_history
from engine.config import load_config

__all__ = ["add_subcommands", "cmd_restore", "cmd_verify"]


def _archive(args: argparse.Namespace) -> Archive:
    return archive_from_config(load_config(Path(args.config)).engine)


def _version(item: Finding | Repair) -> str:
    """``v2`` for a current version, ``v1 (replaced)`` for an old one."""
    return f"v{item.version}" + (" (replaced)" if item.replaced else "")


def _unknown_study(args: argparse.Namespace, db: Any) -> bool:
    """``--study UID`` naming no stored instance: said on stderr (a mistyped UID checked nothing, and said
    "0 instance(s) checked, 0 problem(s)" with exit status 0, as if the study were intact)."""
    if args.study is None or db.read(partial(instances_of, study_instance_uid=args.study, limit=1)):
        return False
    print(f"no stored instances for study {args.study}", file=sys.stderr)
    return True


def _unnamed_secondary(args: argparse.Namespace, archive: Archive, db: Any) -> None:
    """Say on stderr when the database records copies in a secondary location this shell's configuration does
    not name (the engine runs with RADBRIDGE_ARCHIVE_SECONDARY, this shell without it): ``restore`` said
    "no intact copy to restore from" of an image whose second copy was intact, and ``verify`` checked half."""
    if archive.secondary is not None:
        return
    recorded = sum(inst.secondary_state not in ("", "NONE")
                   for inst in db.read(partial(instances_of, study_instance_uid=args.study)))
    if recorded:
        print(f"radbridge archive {args.archive_command}: {recorded} instance(s) have a copy recorded in the secondary"
              " location, but this shell's configuration names none (archive.secondary; RADBRIDGE_ARCHIVE_SECONDARY"
              " in the shipped engine.yaml): those copies are neither checked nor used. Run this with the engine's"
              " environment.", file=sys.stderr)


def cmd_verify(args: argparse.Namespace, db: Any) -> int:
    """``archive verify [--study UID]``: 1 when any copy is missing, damaged or unreadable."""
    archive = _archive(args)
    if _unknown_study(args, db):
        return 1
    _unnamed_secondary(args, archive, db)
    checked, findings = verify(archive, db, args.study)
    old, history = verify_history(archive, db, args.study)
    findings += history
    if args.json:
        print(json.dumps({"checked": checked, "old_versions_checked": old,
                          "problems": [asdict(f) for f in findings]}, indent=2))
    else:
        for f in findings:
            print(f"{f.problem}\t{f.location}\t{f.study_instance_uid}\t{f.sop_instance_uid}\t{_version(f)}"
                  f"\t{f.detail}")
        print(f"{checked} instance(s) checked, {len(findings)} problem(s) ({old} old version(s) checked too)")
    return 1 if findings else 0


def cmd_restore(args: argparse.Namespace, db: Any) -> int:
    """``archive restore [--study UID]``: 1 when a copy could not be rebuilt."""
    archive = _archive(args)
    if _unknown_study(args, db):
        return 1
    _unnamed_secondary(args, archive, db)
    repairs = restore(archive, db, args.study) + restore_history(archive, db, args.study)
    if args.json:
        print(json.dumps([asdict(r) for r in repairs], indent=2))
    else:
        for r in repairs:
            print(f"{'RESTORED' if r.ok else 'FAILED'}\t{r.location}\t{r.sop_instance_uid}\t{_version(r)}"
                  f"\tfrom {r.source or '-'}\t{r.detail}")
        print(f"{sum(r.ok for r in repairs)} copy(ies) restored, {sum(not r.ok for r in repairs)} failed")
    return 0 if all(r.ok for r in repairs) else 1


def add_subcommands(sub: Any, database: Any) -> None:
    """Register ``archive verify|restore``; ``database(args)`` opens the configured database."""
    cmds = sub.add_parser("archive", help="fixity of the archive's two storage locations").add_subparsers(
        dest="archive_command", required=True, metavar="ACTION")
    ver = cmds.add_parser("verify", help="re-read both copies, report every mismatch or loss (exit 1 if any)")
    res = cmds.add_parser("restore", help="rebuild lost or damaged copies from the other location")
    for parser, fn in ((ver, cmd_verify), (res, cmd_restore)):
        parser.add_argument("--study", metavar="UID", help="only this Study Instance UID (default: every instance)")
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
        parser.set_defaults(fn=lambda args, fn=fn: fn(args, database(args)))
