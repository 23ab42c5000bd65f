"""Code tables in ``mappings/tables/``: CSV with a header row, or YAML.

A CSV table's first row names the columns; lines starting with ``#`` are
comments. A YAML table is either a list of rows (mappings of column → value)
or a plain mapping ``code: value`` (columns ``code`` and ``value``). Lookups
match the first *k* columns against *k* key values and return one column;
indices are built once when a mapping is compiled.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.errors import ConfigError

__all__ = ["CodeTable", "load_table", "load_tables"]


@dataclass(frozen=True, slots=True)
class CodeTable:
    """One table: its columns and rows, all values as text."""

    name: str
    path: Path
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    _index: dict[tuple[int, str], dict[tuple[str, ...], str]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def index(self, key_count: int, column: str) -> dict[tuple[str, ...], str]:
        """Key tuple (first ``key_count`` columns) → ``column``; the first row wins."""
        cache_key = (key_count, column)
        found = self._index.get(cache_key)
        if found is None:
            col = self.columns.index(column)
            found = {}
            for row in self.rows:
                found.setdefault(row[:key_count], row[col])
            self._index[cache_key] = found
        return found


def _csv_rows(path: Path, text: str) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    lines = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    reader = csv.reader(io.StringIO("\n".join(lines)))
    rows = [tuple(cell.strip() for cell in row) for row in reader]
    if not rows:
        raise ConfigError([f"{path}:1: table is empty (add a header row naming the columns)"])
    header, body = rows[0], rows[1:]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ConfigError(
                [f"{path}:{number}: row has {len(row)} cells, header has {len(header)}"]
            )
    return header, body


def _yaml_rows(path: Path, text: str) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}:1: invalid YAML: {exc}"]) from exc
    if isinstance(data, dict):
        return ("code", "value"), [(str(k), "" if v is None else str(v)) for k, v in data.items()]
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        header = tuple(str(k) for k in data[0])
        rows = [tuple("" if r.get(c) is None else str(r.get(c)) for c in header) for r in data]
        return header, rows
    raise ConfigError([f"{path}:1: a YAML table is a mapping code: value or a list of rows"])


def load_table(path: Path) -> CodeTable:
    """Read one table; raise ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from exc
    reader = _csv_rows if path.suffix == ".csv" else _yaml_rows
    header, rows = reader(path, text)
    if len(header) < 2:
        raise ConfigError([f"{path}:1: a table needs at least two columns (key and value)"])
    return CodeTable(path.stem, path, header, tuple(rows))


def read_tables(tables_dir: Path | None) -> tuple[dict[str, CodeTable], list[str], set[str]]:
    """Every readable table in ``tables_dir`` by file stem, the problems of the others, and their names.

    One bad row in one table must not hide the others: the mappings that use them are still checked against
    them (before, a short row in procedure_codes.csv made every table reference "unknown ... none are defined").
    """
    if tables_dir is None or not tables_dir.is_dir():
        return {}, [], set()
    problems: list[str] = []
    tables: dict[str, CodeTable] = {}
    broken: set[str] = set()
    for path in sorted(tables_dir.iterdir()):
        if path.suffix not in (".csv", ".yaml", ".yml"):
            continue
        try:
            tables[path.stem] = load_table(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            broken.add(path.stem)
    return tables, problems, broken


def load_tables(tables_dir: Path | None) -> dict[str, CodeTable]:
    """Every ``*.csv``, ``*.yaml`` and ``*.yml`` table in ``tables_dir``, by file stem."""
    tables, problems, _ = read_tables(tables_dir)
    if problems:
        raise ConfigError(problems)
    return tables
