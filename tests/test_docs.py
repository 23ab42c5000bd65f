"""The README, docs/ and the comments of mappings/ say only what exists.

Static checks: every file a document or mapping comment cites is in the repository, every
link into a Markdown page lands on a heading, the README's example channel is a valid channel
naming shipped mappings, every command of the README's operations table parses, and the
README's table of variables matches what the shipped configuration reads. The quick start
itself runs in tests/integration/test_quickstart.py.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.loader import load_yaml, validate_model
from engine.config.models import ChannelConfig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: Documents a user reads; each is checked for the files it cites.
DOCUMENTS = sorted(
    [README, *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.md"), *(ROOT / "mappings").glob("*.md")]
)
#: Mapping files and code tables: their comments and notes are documentation too.
MAPPING_FILES = sorted([*(ROOT / "mappings").glob("*.yaml"), *(ROOT / "mappings" / "tables").glob("*.csv")])

#: Files a site provides itself, named in configuration examples (TLS material), or a walk-through makes
#: (docs/fhir-auth.md's client key): not shipped.
SITE_FILES = frozenset({"tls/server.pem", "tls/server.key", "tls/ca.pem", "client.key", "client.pem", "ca.pem",
                        "try-client.pem"})

_CITED = re.compile(r"[\w./<>{}*…-]*\.(?:md|csv|yaml|yml|hl7|json|py|pem|key|toml)(?:\.example)?\b")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_PLACEHOLDER = re.compile(r"[<>{}*…]")


def _repo_files() -> set[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return {line for line in out.splitlines() if line}


def _exists(token: str, base: Path, files: set[str]) -> bool:
    """A cited path exists relative to the repository root, the citing file's folder, or
    mappings/ (the docs name code tables as ``tables/x.csv``); a bare name anywhere."""
    if "/" not in token:
        return any(Path(f).name == token for f in files)
    for start in (ROOT, base, ROOT / "mappings"):
        candidate = (start / token).resolve()
        if candidate.is_relative_to(ROOT) and candidate.relative_to(ROOT).as_posix() in files:
            return True
    return False


def _citations(text: str) -> list[str]:
    """File names and paths in ``text``, less URLs, placeholders and site files."""
    tokens = []
    for word in text.split():
        if "://" in word:
            continue
        for match in _CITED.finditer(word):
            token = match.group(0).removeprefix("./")
            if "." not in token.lstrip("."):  # an extension alone: "without `.yaml`"
                continue
            if not _PLACEHOLDER.search(token) and token not in SITE_FILES:
                tokens.append(token)
    return tokens


@pytest.mark.parametrize("path", DOCUMENTS + MAPPING_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_cited_file_is_in_the_repository(path: Path) -> None:
    files = _repo_files()
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".csv"):  # only what a reader reads: comments and notes
        text = "\n".join(line for line in text.splitlines() if "#" in line or "note:" in line)
    missing = sorted({t for t in _citations(text) if not _exists(t, path.parent, files)})
    assert not missing, f"{path.relative_to(ROOT)} cites files that are not in the repository: {missing}"


def test_the_citation_check_catches_a_file_outside_the_repository() -> None:
    files = _repo_files()
    cited = _citations("# Sources follow RADIOLOGY_HL7_DICOM.md section 3 and ../shared/corpus/x.hl7")
    assert cited == ["RADIOLOGY_HL7_DICOM.md", "../shared/corpus/x.hl7"]
    assert not any(_exists(t, ROOT / "mappings", files) for t in cited)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", path.read_text(encoding="utf-8"), re.M)}


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_lands_on_a_file_and_heading(path: Path) -> None:
    problems = []
    for target in _LINK.findall(path.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists() or not dest.is_relative_to(ROOT):
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not problems, f"{path.relative_to(ROOT)}: {problems}"


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def test_the_readme_example_channel_is_valid_and_names_shipped_mappings_and_handlers(tmp_path: Path) -> None:
    from engine.handlers import handler_names
    from engine.runtime import HANDLER_MODULES

    example = next(b for b in _blocks(README.read_text(encoding="utf-8"), "yaml") if "source:" in b)
    (tmp_path / "example.yaml").write_text(example)
    channel = validate_model(ChannelConfig, load_yaml(tmp_path / "example.yaml", env={}))  # as `run` loads it
    assert channel.mapping_names, "the example channel should show a mapping"
    for name in channel.mapping_names:
        assert (ROOT / "mappings" / f"{name}.yaml").is_file(), f"README's example names mapping {name!r}"
    for module in HANDLER_MODULES:
        importlib.import_module(module)
    assert set(channel.handlers) <= set(handler_names()), f"unknown handlers in README's example: {channel.handlers}"


#: Reference lists of commands: (document, section).
COMMAND_LISTS = ((README, "Operations"), (ROOT / "docs" / "mapping.md", "Reference"))


def _operations_commands() -> list[tuple[str, list[str], list[str]]]:
    """(command, sub-command words, flags of its line) of each ``radbridge`` command listed."""
    table = "\n".join(_sections(doc.read_text(encoding="utf-8"))[title] for doc, title in COMMAND_LISTS)
    rows = []
    for line in table.splitlines():
        for command in re.findall(r"`(radbridge [^`]+)`", line):
            words = []
            for word in command.split()[1:]:
                if not re.fullmatch(r"[a-z][a-z-]*", word):
                    break
                words.append(word)
            rows.append((command, words, re.findall(r"--[a-z][a-z-]*", line)))
    return rows


def test_the_operations_table_lists_commands() -> None:
    commands = _operations_commands()
    assert len(commands) >= 10
    assert all(words for _, words, _ in commands)


@pytest.mark.parametrize("command,words,flags", [pytest.param(*c, id=c[0]) for c in _operations_commands()])
def test_every_operations_command_parses(command: str, words: list[str], flags: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "engine.cli.main", *words, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, f"`radbridge {' '.join(words)} --help` failed: {done.stderr}"
    unknown = [f for f in flags if f not in done.stdout]
    assert not unknown, f"README shows {unknown} for `{command}`, which `--help` does not list"


def test_the_readme_variables_are_the_ones_the_shipped_configuration_reads() -> None:
    readme = README.read_text(encoding="utf-8")
    table = _sections(readme)["Configuration"]
    documented = set(re.findall(r"^\| `(RADBRIDGE_[A-Z_]+)`", table, flags=re.M))
    shipped = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "config").rglob("*.yaml"))
    read = set(re.findall(r"\$\{(RADBRIDGE_[A-Z_]+)", shipped))
    assert documented <= read, f"README documents variables no shipped file reads: {documented - read}"
    unmentioned = {v for v in read - documented if v not in readme}
    assert not unmentioned, f"the shipped configuration reads variables the README never names: {unmentioned}"


def test_the_walk_through_queries_the_worklist_as_the_readme_does() -> None:
    def findscu(text: str) -> str:
        block = next(b for b in _blocks(text, "bash") if "findscu" in b)
        return " ".join(block.split())

    walk = (ROOT / "examples" / "README.md").read_text(encoding="utf-8")
    walk = "\n".join(line.removeprefix("   ") for line in walk.splitlines())
    assert findscu(walk) == findscu(README.read_text(encoding="utf-8"))


def test_the_readme_links_the_performance_page_and_keeps_benchmarks_out() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "docs/performance.md" in readme
    assert "msg/s" not in readme and "bench_mllp" not in readme


_MAPPING_COMMAND = re.compile(r"^\s*(?:\$ )?(?:\.venv/bin/)?(radbridge mapping (?:check|test|verify)\b[^#\n]*)", re.M)


def _mapping_commands() -> list[str]:
    """Every ``radbridge mapping`` command the documents show, except placeholders and --update."""
    found = []
    for path in DOCUMENTS:
        for command in _MAPPING_COMMAND.findall(path.read_text(encoding="utf-8")):
            command = command.strip().rstrip("`")
            if re.search(r"[A-Z]{3,}|\[|\|", command) or "--update" in command:
                continue
            found.append(command)
    return sorted(set(found))


def test_the_documents_show_mapping_commands() -> None:
    assert any(" test " in c for c in _mapping_commands())


@pytest.mark.parametrize("command", _mapping_commands())
def test_every_mapping_command_shown_runs_from_the_repository_root(command: str) -> None:
    done = subprocess.run([sys.executable, "-m", "engine.cli.main", *command.split()[1:]], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, f"`{command}` failed: {done.stdout[-500:]} {done.stderr[-500:]}"
