"""Writing HL7 v2 text (engine/mapping/targets.py): what it keeps between messages."""

from __future__ import annotations

import gc
import tracemalloc

from engine.hl7.er7 import Separators
from engine.mapping.paths import target_path
from engine.mapping.targets import render_hl7


def _render(n: int) -> str:
    """PID-3 written with a delimiter set of its own (a component separator no other ``n`` uses)."""
    seps = Separators(component=chr(0x4E00 + n))
    return render_hl7([(target_path("PID-3"), "A|1")], ["PID"], seps)


def test_a_new_delimiter_set_in_every_message_does_not_grow_memory() -> None:
    """Each inbound message brings its own MSH-1/MSH-2; a pattern was kept for every set ever seen."""
    assert _render(0) == "PID|||A\\F\\1\r"
    tracemalloc.start()  # before the warm-up: what later replaces its entries counts as replaced
    try:
        for n in range(600):  # warm-up: every cache (this module's, the re module's) fills to its bound
            _render(n)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for n in range(600, 1600):
            _render(n)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 200_000, f"{grown} bytes kept after 1,000 delimiter sets"
