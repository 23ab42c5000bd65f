"""Throw-away certificate authorities and certificates for TLS tests (openssl CLI).

:func:`make_pki` writes ``<ca>.pem``/``<ca>.key`` and, for each leaf, ``<leaf>.pem``
and ``<leaf>.key`` signed by that CA, valid for ``localhost`` and 127.0.0.1.
Keys are unencrypted RSA 2048 (accepted by DCMTK's default BCP 195 profile).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.conftest import need


def openssl(*args: str) -> None:
    """Run the openssl CLI; raise on failure."""
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_pki(directory: Path, ca: str = "ca", leaves: Sequence[str] = ("server", "client")) -> Path:
    """A CA named ``ca`` and leaf certificates signed by it, in ``directory``; returns it."""
    need(shutil.which("openssl") is not None, "openssl not installed")
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
            "-keyout", str(d / f"{ca}.key"), "-out", str(d / f"{ca}.pem"))  # fmt: skip
    ext = d / "leaf.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in leaves:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{ca}.pem"),
                "-CAkey", str(d / f"{ca}.key"), "-CAcreateserial", "-days", "2",
                "-extfile", str(ext), "-out", str(d / f"{name}.pem"))  # fmt: skip
    return d
