"""Mapping files: declarative YAML that turns messages into records, DICOM, FHIR or HL7.

Interface analysts own ``mappings/*.yaml`` and ``mappings/tables/*``; the
engine loads them once (:func:`load_mappings`, all-or-nothing) and applies the
compiled form per message. The language is described in ``docs/mapping.md``.

Errors while applying are the engine's HL7 errors (HL7 v2.5.1 table 0357):
101 required field missing, 102 data type error (e.g. a bad TS), 103 table
value not found, each with the ERR-2 location of the source field; a message
type the mapping is not written for is rejected with 200/201.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ConfigError
from engine.mapping import hl7types as _hl7types  # noqa: F401  (registers the TS/XPN transforms)
from engine.mapping.compiled import CompiledMapping, CompiledOutput
from engine.mapping.compiler import compile_file
from engine.mapping.result import MappingResult, Provenance
from engine.mapping.tables import CodeTable, load_tables, read_tables
from engine.mapping.transforms import TransformContext, register_transform

__all__ = [
    "CodeTable",
    "CompiledMapping",
    "CompiledOutput",
    "MappingResult",
    "Provenance",
    "TransformContext",
    "load_mapping",
    "load_mappings",
    "mapping_files",
    "register_transform",
]

_SUFFIXES = (".yaml", ".yml")


def load_mapping(
    path: Path, *, tables_dir: Path | None = None, timezone: str = "UTC"
) -> CompiledMapping:
    """Load, check and compile one mapping file.

    ``tables_dir`` defaults to ``tables/`` beside the file. Raises ConfigError
    whose problems read ``file:line: field: message (suggestion)``.
    """
    tables = load_tables(tables_dir if tables_dir is not None else path.parent / "tables")
    return compile_file(path, tables, timezone)


def mapping_files(mappings_dir: Path) -> list[Path]:
    """The mapping files directly in ``mappings_dir`` (tables/ and tests/ are not mappings)."""
    if not mappings_dir.is_dir():
        return []
    return sorted(p for p in mappings_dir.iterdir() if p.suffix in _SUFFIXES and p.is_file())


def load_mappings(mappings_dir: Path, timezone: str = "UTC") -> dict[str, CompiledMapping]:
    """Every mapping in ``mappings_dir`` by name (file stem); all or nothing.

    Used at start-up and on reload: a ConfigError listing every problem of
    every file is raised if any file or table fails, so the caller keeps
    the running version.
    """
    tables, problems, broken = read_tables(mappings_dir / "tables")
    # A reference to a table whose file is reported above is not also "unknown".
    unknown_broken = tuple(f"unknown table '{name}'" for name in broken)
    compiled: dict[str, CompiledMapping] = {}
    for path in mapping_files(mappings_dir):
        if path.stem in compiled:
            problems.append(f"{path}:1: (document): a mapping named {path.stem} already exists")
            continue
        try:
            compiled[path.stem] = compile_file(path, tables, timezone)
        except ConfigError as exc:
            problems.extend(p for p in exc.problems if not any(u in p for u in unknown_broken))
    if problems:
        raise ConfigError(problems)
    return compiled
