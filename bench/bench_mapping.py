"""Benchmark: ORM^O01 → order records with the shipped ``order-to-worklist`` mapping.

Run from the repository root: ``python -m bench.bench_mapping`` (or
``python bench/bench_mapping.py``). Prints microseconds per message for a
plain tokenizer pass (``engine.hl7.er7.Message``, the peer), for tokenizing
plus mapping, and the mapping's own share, with the ratio to the peer; all
measured in the same run (best of 7 repeats of process CPU time, so other
load on the machine disturbs the figures less). The target is under
100 µs per ORM → order evaluation (issue 3).

Two ways are measured: ``channel``, as a channel maps every message (the
generated functions, no provenance), and ``mapping test``, rule by rule
with provenance recorded.
"""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.hl7.charset import decode  # noqa: E402
from engine.hl7.er7 import Message  # noqa: E402
from engine.mapping import load_mappings  # noqa: E402

CASES = ("orm_o01_nw_ct", "orm_o01_two_orders", "omi_o23_ipc")


def best_us(stmt: object, number: int) -> float:
    """Best-of-7 microseconds per call of ``stmt``."""
    timer = timeit.Timer(stmt, timer=time.process_time)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=7, number=number)) / number * 1e6


def main() -> None:
    mapping = load_mappings(ROOT / "mappings")["order-to-worklist"]
    folder = ROOT / "mappings" / "tests" / "order-to-worklist"
    print(f"{'case':<22}{'way':<14}{'tokenize':>10}{'tok+map':>10}{'map':>10}{'map/tok':>9}  records")
    for case in CASES:
        text = decode((folder / f"{case}.hl7").read_bytes()).text
        records = len(mapping.apply(Message(text)).records)
        tok = best_us(lambda t=text: Message(t), 2000)
        for way, provenance in (("channel", False), ("mapping test", True)):
            both = best_us(lambda t=text, p=provenance: mapping.apply(Message(t), provenance=p), 2000)
            own = both - tok
            print(
                f"{case:<22}{way:<14}{tok:>9.1f}µ{both:>9.1f}µ{own:>9.1f}µ{own / tok:>8.1f}x"
                f"  {records} ({own / records:.1f} µs per record)"
            )


if __name__ == "__main__":
    main()
