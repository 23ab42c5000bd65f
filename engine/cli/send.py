"""``radbridge send HOST:PORT FILE...``: an MLLP client that reports each ACK code."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from channels.mllp.client import MLLPClient
from engine.hl7.charset import decode
from engine.hl7.er7 import Message, unescape

__all__ = ["send_files"]

_GOOD = {"AA", "CA"}


def _target(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"radbridge send: expected HOST:PORT, got {spec!r}")
    return host, int(port)


def _payload(path: Path) -> bytes:
    data = path.read_bytes()
    if data.startswith(b"\x0b"):
        data = data[1:].split(b"\x1c", 1)[0]
    return data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")


async def _send_all(spec: str, files: list[Path], timeout: float) -> int:
    host, port = _target(spec)
    client = MLLPClient(host, port, timeout)
    failures = 0
    try:
        for number, path in enumerate(files, start=1):
            code, detail = await _send_one(client, path, spec)
            print(f"{path}\t{code}" + (f"\t{detail}" if detail else ""))  # no trailing tab after a plain AA
            failures += code not in _GOOD
            if len(files) > 20 and number % 100 == 0:
                print(f"... {number}/{len(files)} sent", file=sys.stderr)
    finally:
        await client.close()
    return 1 if failures else 0


def _reason(exc: BaseException) -> str:
    """The operating system's words for ``exc``, not its class name."""
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return os.strerror(exc.errno)  # asyncio words a refusal "Connect call failed (...)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # resolver errors carry negative codes of their own
    return str(exc) or type(exc).__name__


async def _send_one(client: MLLPClient, path: Path, spec: str) -> tuple[str, str]:
    """(ACK code or ERROR/TIMEOUT/NOACK, detail naming the file or the host and the reason)."""
    try:
        payload = _payload(path)
    except OSError as exc:
        return "ERROR", f"cannot read {path}: {_reason(exc)}"
    if not client.connected:
        try:
            await client.connect()
        except TimeoutError:
            return "TIMEOUT", f"cannot connect to {spec}: no answer within {client.timeout:g}s"
        except OSError as exc:
            return "ERROR", f"cannot connect to {spec}: {_reason(exc)}"
    try:
        answer = await client.send(payload)
    except TimeoutError:
        await client.close()
        return "TIMEOUT", f"{spec}: no ACK within {client.timeout:g}s"
    except OSError as exc:
        await client.close()
        return "ERROR", f"{spec}: {_reason(exc)}"
    return ack_result(answer, spec)


def ack_result(answer: bytes, spec: str) -> tuple[str, str]:
    """MSA-1 and the text for a person (MSA-3, else ERR-8), unescaped: "ORU^R01", not "ORU\\S\\R01"."""
    ack = Message(decode(answer).text)
    msa = ack.segment("MSA")
    if msa is None:
        return "NOACK", f"{spec}: answer has no MSA segment"
    err = ack.segment("ERR")
    return msa.value(1) or "NOACK", unescape(msa.value(3) or (err.value(8) if err else ""), ack.seps)


def send_files(spec: str, files: list[Path], timeout: float) -> int:
    """Send each file as one message; exit status 1 if any was not accepted."""
    return asyncio.run(_send_all(spec, files, timeout))
