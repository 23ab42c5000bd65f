"""Text for a terminal: stored messages may hold any byte, a terminal must not get them raw."""

from __future__ import annotations

import re

__all__ = ["visible"]

#: C0 controls but the newline, DEL and C1 controls: an ESC or a CSI could move the cursor,
#: retitle the window or hide text; MLLP's own \x0b and \x1c would be invisible.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """``text`` with every control character but the newline written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
