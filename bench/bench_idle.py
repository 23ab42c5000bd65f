"""Idle cost of a running engine: CPU time per second of ``radbridge run`` while nothing arrives.

    python bench/bench_idle.py                         # this tree, 20 s after a 5 s settle
    python bench/bench_idle.py --compare ../wt-before  # and another checkout's engine, one after the other

Starts the same engine as ``bench_mllp.py --workflow`` (MLLP channel, the shipped mappings,
the patients/orders handlers, the FHIR projector the runtime starts), lets it settle, then
reads its user + system CPU time (/proc) over ``--seconds`` and prints milliseconds of CPU
per second. Timers and polls are what this measures; the figure is the engine process's
own, so it holds on a busy machine better than wall-clock figures do.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_mllp import ROOT, cpu_seconds, free_port, start_engine


def idle_ms_per_s(root: Path, settle: float, seconds: float) -> float:
    """CPU milliseconds per wall-clock second of an idle engine of the checkout ``root``."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = start_engine(Path(tmp), free_port(), True, root)
        try:
            time.sleep(settle)
            cpu0, wall0 = cpu_seconds(engine.pid), time.monotonic()
            time.sleep(seconds)
            return (cpu_seconds(engine.pid) - cpu0) / (time.monotonic() - wall0) * 1000
        finally:
            engine.terminate()
            engine.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--compare", metavar="DIR", help="also measure the engine of the checkout DIR")
    args = parser.parse_args()
    trees = {"this tree": ROOT} | ({args.compare: Path(args.compare).resolve()} if args.compare else {})
    for name, root in trees.items():
        print(f"{name}: {idle_ms_per_s(root, args.settle, args.seconds):.2f} ms CPU per second idle")


if __name__ == "__main__":
    main()
