"""Linux system calls that Python's ``os`` module does not offer, looked up in the C library once."""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["libc_function"]


def libc_function(name: str, *argtypes: Any) -> Any:
    """The C library's ``name`` (int result, errno kept for ``ctypes.get_errno``), or None where it has none."""
    try:
        call = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    call.argtypes = argtypes
    call.restype = ctypes.c_int
    return call
