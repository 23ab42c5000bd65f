"""Deterministic DICOM UIDs (PS3.5 9.1, B.2 "UUID derived UID").

A resent order must yield the same Study Instance UID, so UIDs are derived
from a name (uuid5) instead of drawn at random. Under the default root
``2.25`` the UID is ``2.25.<the UUID as an integer>`` (PS3.5 B.2); under an
organisation's root the integer is cut to fit the 64-character limit.
"""

from __future__ import annotations

import uuid

__all__ = ["MAX_UID_LENGTH", "derived_uid"]

MAX_UID_LENGTH = 64
_NAMESPACE = uuid.UUID("6f0c52f6-9b1d-4a4e-9a53-2d3f6b0c7a11")


def derived_uid(root: str, *parts: str) -> str:
    """The UID under ``root`` named by ``parts``; equal parts give the same UID."""
    name = "\x1f".join(parts)
    number = uuid.uuid5(_NAMESPACE, name).int
    room = MAX_UID_LENGTH - len(root) - 1
    if room < 1:
        raise ValueError(f"UID root {root!r} leaves no room for a suffix")
    digits = str(number)[:room]
    return f"{root}.{digits.lstrip('0') or '0'}"
