"""DCMTK ``wlmscpfs`` as a reference worklist server serving the same entries as radbridge."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from tests.conftest import free_port, wait_for_port

from .conftest import dcmtk_env


def dump_text(ds: Dataset, depth: int = 0) -> str:
    """``ds`` in dcmdump syntax, as ``dump2dcm`` reads it."""
    lines = []
    for elem in ds:
        tag = f"({elem.tag.group:04x},{elem.tag.element:04x})"
        if elem.VR == "SQ":
            lines.append(f"{tag} SQ (Sequence)")
            for item in elem.value:
                lines.append("(fffe,e000) na (Item)")
                lines.append(dump_text(item, depth + 1))
                lines.append("(fffe,e00d) na (ItemDelimitationItem)")
            lines.append("(fffe,e0dd) na (SequenceDelimitationItem)")
            continue
        value = (
            "\\".join(str(v) for v in elem.value)
            if isinstance(elem.value, MultiValue)
            else str(elem.value or "")
        )
        lines.append(f"{tag} {elem.VR} [{value}]")
    return "\n".join(line for line in lines if line)


def build_wlm_dir(entries: Iterable[Dataset], root: Path, aet: str = "RADBRIDGE") -> Path:
    """One ``.wl`` file per entry under ``root/aet`` (made with dump2dcm)."""
    folder = root / aet
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    for n, ds in enumerate(entries):
        dump = root / f"e{n}.dump"
        dump.write_text(dump_text(ds), encoding="utf-8")
        subprocess.run(["dump2dcm", "+te", str(dump), str(folder / f"e{n}.wl")],
                       env=dcmtk_env(), check=True, capture_output=True)  # fmt: skip
        dump.unlink()
    return root


def start_wlmscpfs(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``wlmscpfs -dfr -dfp root`` on a free port; stop it with ``proc.terminate()``."""
    port = free_port()
    proc = subprocess.Popen(["wlmscpfs", "-dfr", "-dfp", str(root), str(port)], env=dcmtk_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, proc=proc)
    except BaseException:
        stop(proc)
        raise
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started here, by its pid."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
