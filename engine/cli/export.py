"""``radbridge studies export STUDY_UID DIR``: the study's current instances as DICOM Part 10 files.

Each file is read from the primary location, or the secondary when the primary
copy is gone (:func:`engine.archive.archive.copy_current`), checked against the
checksums recorded at ingest while it is copied, and written as
``DIR/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` through a temporary name, each file
``0600`` and each directory it creates ``0700`` whatever the umask. The export is
audited (``study.export``, the OS user as actor) like ``studies show``: the files carry
patient data.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from engine.archive.archive import Archive, archive_from_config, copy_current, instances_of
from engine.audit import record
from engine.config import load_config
from engine.errors import ArchiveUnavailable

__all__ = ["add_export", "export_study"]


def _write(archive: Archive, inst: Any, target: Path) -> None:
    # The files carry patient data: owner-only whatever the umask, like the data directory
    # (docs/security.md). A directory that exists already is the operator's and is left alone.
    target.parent.parent.parent.mkdir(parents=True, exist_ok=True)  # above DIR: no patient data
    for directory in (target.parent.parent, target.parent):  # DIR, DIR/<SeriesInstanceUID>
        directory.mkdir(mode=0o700, exist_ok=True)
    temporary = target.with_name(f".{target.name}.part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a .part left by an earlier export keeps its old mode through O_TRUNC
    with open(fd, "w+b") as out:
        copy_current(archive, inst, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, target)


def _audit(conn: Connection, uid: str, directory: Path, count: int) -> None:
    record(conn, "study.export", "study", uid,
           {"study_instance_uids": [uid], "directory": str(directory), "instances": count})


def export_study(archive: Archive, db: Any, study_instance_uid: str, directory: Path) -> tuple[int, list[str]]:
    """(files written, problems); audited when the study has instances."""
    found = db.read(partial(instances_of, study_instance_uid=study_instance_uid))
    if found:
        db.writer.call(partial(_audit, uid=study_instance_uid, directory=directory.resolve(), count=len(found)))
    problems = []
    written = 0
    for inst in found:
        try:
            _write(archive, inst, directory / inst.series_instance_uid / f"{inst.sop_instance_uid}.dcm")
            written += 1
        except (ArchiveUnavailable, OSError) as exc:
            problems.append(f"{inst.sop_instance_uid}: {exc}")
    return written, problems


def cmd_export(args: argparse.Namespace, db: Any) -> int:
    """0 when every instance was written; 1 for an unknown study or any instance that could not be."""
    archive = archive_from_config(load_config(Path(args.config)).engine)
    written, problems = export_study(archive, db, args.study_instance_uid, Path(args.directory))
    for problem in problems:
        print(f"not exported: {problem}", file=sys.stderr)
    if written == 0 and not problems:
        print(f"no stored instances for study {args.study_instance_uid}", file=sys.stderr)
        return 1
    print(f"{written} instance(s) written to {args.directory}")
    return 1 if problems else 0


def add_export(studies_cmd: Any, database: Any) -> None:
    """Register ``studies export STUDY_UID DIR``."""
    export = studies_cmd.add_parser("export", help="write the study's current instances as DICOM files (audited)")
    export.add_argument("study_instance_uid", metavar="STUDY_UID", help="the Study Instance UID")
    export.add_argument("directory", metavar="DIR", help="where to write <series>/<instance>.dcm")
    export.set_defaults(fn=lambda args: cmd_export(args, database(args)))
