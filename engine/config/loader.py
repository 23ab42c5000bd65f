"""Loading YAML configuration with environment substitution and located errors.

``${NAME}`` and ``${NAME:-default}`` are replaced in scalar values before
validation. Every problem is reported as ``file:line: field: message`` so an
analyst can go straight to it; a file with any problem is never applied.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from engine.errors import ConfigError

__all__ = ["Located", "UnresolvedYamlError", "did_you_mean", "load_yaml", "substitute", "validate_model"]

M = TypeVar("M", bound=BaseModel)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Located:
    """A parsed YAML document plus the line of every path in it."""

    def __init__(self, path: Path, data: Any, lines: dict[tuple[str | int, ...], int]) -> None:
        self.path = path
        self.data = data
        self.lines = lines

    def line_of(self, loc: tuple[str | int, ...]) -> int:
        """The line of the deepest known prefix of ``loc`` (1-based).

        A key's line is the line of the key itself, not of its value (a block
        mapping or list under a key starts on the next line).
        """
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return 1

    def where(self, loc: tuple[str | int, ...]) -> str:
        """``file:line: field`` for a path into the document."""
        field = ".".join(str(p) for p in loc) or "(document)"
        return f"{self.path}:{self.line_of(loc)}: {field}"


class UnresolvedYamlError(ConfigError):
    """A well-formed file with ``${NAME}`` references that are not set.

    ``located`` is the document with those values empty, and ``unresolved`` the
    top-level keys holding them, so that the rest of the file can still be used
    for the checks of other files.
    """

    def __init__(self, problems: list[str], located: Located, unresolved: set[str]) -> None:
        super().__init__(problems)
        self.located = located
        self.unresolved = unresolved


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``did you mean 'X'?`` for the closest choice, else a short list of the valid ones."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    shown = ", ".join(options[:12]) + (" …" if len(options) > 12 else "")
    return f"known: {shown}" if options else "none are defined"


def substitute(value: str, env: Mapping[str, str], missing: list[str]) -> str:
    """Replace ``${NAME}``/``${NAME:-default}``; unknown names without default go to ``missing``."""

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    return _VAR.sub(repl, value)


def load_yaml(path: Path, env: Mapping[str, str] | None = None) -> Located:
    """Parse ``path``; raise ConfigError with file and line on syntax or substitution errors."""
    env = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{path}:{line}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    lines: dict[tuple[str | int, ...], int] = {}
    problems: list[str] = []
    unresolved: set[str] = set()
    data = _build(node, (), lines, env, problems, path, unresolved) if node is not None else {}
    if problems:
        raise UnresolvedYamlError(problems, Located(path, data, lines), unresolved)
    return Located(path, data, lines)


def _build(
    node: yaml.Node,
    loc: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    env: Mapping[str, str],
    problems: list[str],
    path: Path,
    unresolved: set[str],
) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out:
                problems.append(f"{path}:{key_node.start_mark.line + 1}: {key}: duplicate key")
            out[key] = _build(value_node, (*loc, key), lines, env, problems, path, unresolved)
            lines[(*loc, key)] = key_node.start_mark.line + 1  # the key's line, not its value's
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, (*loc, i), lines, env, problems, path, unresolved) for i, v in enumerate(node.value)]
    return _scalar(node, loc, env, problems, path, unresolved)


def _scalar(
    node: yaml.Node, loc: tuple[str | int, ...], env: Mapping[str, str], problems: list[str], path: Path,
    unresolved: set[str],
) -> Any:
    value = node.value
    if isinstance(value, str) and "${" in value:
        missing: list[str] = []
        value = substitute(value, env, missing)
        if missing and loc:
            unresolved.add(str(loc[0]))
        for name in missing:
            field = ".".join(str(p) for p in loc)
            problems.append(
                f"{path}:{node.start_mark.line + 1}: {field}: environment variable {name} is not set"
            )
        return value
    # A constructor of its own: one remembers every node it built (and, through each node's marks, the
    # whole text it came from) until its document ends, and a scalar built alone never ends one.
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def validate_model(model: type[M], located: Located, context: dict[str, Any] | None = None) -> M:
    """Validate ``located.data`` as ``model``; errors name file, line and field.

    Unknown keys get a did-you-mean among the keys allowed at that place.
    """
    try:
        return model.model_validate(located.data, context=context)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            message = err["msg"]
            if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
                allowed = _field_names(model, loc[:-1])
                message = f"unknown key {loc[-1]!r} ({did_you_mean(loc[-1], allowed)})"
            problems.append(f"{located.where(_data_loc(located.data, loc))}: {message}")
        raise ConfigError(problems) from exc


def _data_loc(data: Any, loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """``loc`` as a path into the document: drop the union tags pydantic inserts (``mllp``)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(data, dict) and isinstance(part, str) and part not in data and not last:
            continue  # a tag of a discriminated union, not a key in the file
        out.append(part)
        if isinstance(data, dict):
            data = data.get(part) if isinstance(part, str) else None
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            data = None
    return tuple(out)


def _members(tp: Any) -> list[Any]:
    """The types a field annotation allows (Annotated, Optional and unions unwrapped)."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(tp) for m in _members(arg)]
    return [tp]


def _step(tp: Any, part: str | int) -> list[Any]:
    """The types one step below ``tp`` along ``part`` of a pydantic error location."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, info in tp.model_fields.items():
            if part in (name, info.alias):
                return _members(info.annotation)
        tag = tp.model_fields.get("type")
        if tag is not None and part in get_args(tag.annotation):
            return [tp]  # the union member chosen by its tag
        return []
    origin = get_origin(tp)
    if origin is list and isinstance(part, int):
        return _members(get_args(tp)[0])
    if origin is dict:
        return _members(get_args(tp)[1])
    return []


def _field_names(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The keys allowed in the mapping at ``loc`` (a pydantic error location) of ``model``."""
    current: list[Any] = [model]
    for part in loc:
        current = [nxt for tp in current for member in _members(tp) for nxt in _step(member, part)]
    names: list[str] = []
    for tp in current:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            names += [info.alias or name for name, info in tp.model_fields.items()]
    return names
