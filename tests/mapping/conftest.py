"""Shared fixtures for the mapping tests: the repo's mappings and the shared corpus."""

from __future__ import annotations

from pathlib import Path

from engine.hl7.charset import decode
from engine.hl7.er7 import Message
from tests.conftest import need

REPO_ROOT = Path(__file__).resolve().parents[2]
MAPPINGS_DIR = REPO_ROOT / "mappings"
CORPUS = REPO_ROOT.parent / "shared" / "corpus"


def corpus_message(relative: str) -> Message:
    """A message from ../shared/corpus/hl7, decoded by MSH-18; skips when the corpus is absent."""
    path = CORPUS / "hl7" / relative
    if not path.is_file():
        reason = f"shared corpus not found at {CORPUS} (needs ../shared/corpus beside the repo)"
        need(False, reason)
    return Message(decode(path.read_bytes()).text)


def write(tmp: Path, name: str, text: str) -> Path:
    """Write a file under ``tmp`` and return its path."""
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
