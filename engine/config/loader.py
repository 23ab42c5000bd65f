"""Loading YAML configuration with environment substitution and located errors.

``${NAME}`` and ``${NAME:-default}`` are replaced in scalar values before
validation. Every problem is reported as ``file:line: field: message`` so an
analyst can go straight to it; a file with any problem is never applied.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from engine.errors import ConfigError

__all__ = ["Located", "load_yaml", "substitute", "validate_model"]

M = TypeVar("M", bound=BaseModel)

_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Located:
    """A parsed YAML document plus the line of every path in it."""

    def __init__(self, path: Path, data: Any, lines: dict[tuple[str | int, ...], int]) -> None:
        self.path = path
        self.data = data
        self.lines = lines

    def line_of(self, loc: tuple[str | int, ...]) -> int:
        """The line of the deepest known prefix of ``loc`` (1-based)."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return 1


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
    data = _build(node, (), lines, env, problems, path) if node is not None else {}
    if problems:
        raise ConfigError(problems)
    return Located(path, data, lines)


def _build(
    node: yaml.Node,
    loc: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    env: Mapping[str, str],
    problems: list[str],
    path: Path,
) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out:
                problems.append(f"{path}:{key_node.start_mark.line + 1}: {key}: duplicate key")
            out[key] = _build(value_node, (*loc, key), lines, env, problems, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, (*loc, i), lines, env, problems, path) for i, v in enumerate(node.value)]
    return _scalar(node, loc, env, problems, path)


def _scalar(
    node: yaml.Node, loc: tuple[str | int, ...], env: Mapping[str, str], problems: list[str], path: Path
) -> Any:
    value = node.value
    if isinstance(value, str) and "${" in value:
        missing: list[str] = []
        value = substitute(value, env, missing)
        for name in missing:
            field = ".".join(str(p) for p in loc)
            problems.append(
                f"{path}:{node.start_mark.line + 1}: {field}: environment variable {name} is not set"
            )
        return value
    return _CONSTRUCTOR.construct_object(node, deep=True)


def validate_model(model: type[M], located: Located, context: dict[str, Any] | None = None) -> M:
    """Validate ``located.data`` as ``model``; errors name file, line and field."""
    try:
        return model.model_validate(located.data, context=context)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "(document)"
            line = located.line_of(loc)
            problems.append(f"{located.path}:{line}: {field}: {err['msg']}")
        raise ConfigError(problems) from exc
