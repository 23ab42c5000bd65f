"""Instructions a message of the whole engine, counted by callgrind: an A/B that the machine's load cannot move.

    .venv/bin/python -m bench.bench_instructions --compare ../wt-before [--workflow] [--senders 1|8]
                                                 [--messages 400] [--with-projector]

Each tree's ``radbridge run`` (as ``bench_mllp.py`` starts it: SQLite ``FULL``, a fresh data
directory, the tree's own venv and mappings) runs under ``valgrind --tool=callgrind`` with
instrumentation off; after a warm-up of 40 messages a sender it is switched on
(``callgrind_control -i on``) for ``--messages`` ORM^O01 from ``--senders`` MLLP senders over
loopback, then off, and the engine is stopped. Callgrind counts the instructions every thread
executed (``--separate-threads=yes``): unlike CPU seconds they do not depend on what else the
machine runs, so a few per cent are visible on a shared VM. The two trees run at the same time.

Printed per tree: instructions a message of each thread that did work (the event loop, which also
commits a lone sender's message inline; the writer thread, which group-commits under several
senders; SQLite's checkpoint thread, whose share varies from run to run with its timer) and of
all threads; then after/before ratios. Valgrind runs one thread at a time, so group sizes under
8 senders differ from a real run and wall-clock effects (GIL hand-overs, fsync waits) are not
counted: ``bench_mllp.py --compare`` measures those. The FHIR projector is off unless
``--with-projector`` (it is the FHIR work's cost, not the order path's; see docs/performance.md).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import bench_mllp

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 40  # messages a sender before counting starts


def _control(pid: int, on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(root: Path, out: Path, args: argparse.Namespace) -> dict[str, int]:
    """Instructions a message of each thread that executed any, and ``all``."""
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = bench_mllp.free_port()
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                    f"--callgrind-out-file={out}/cg.out"]
        engine = bench_mllp.start_engine(Path(tmp), port, args.workflow, root, args.with_projector,
                                         prefix=valgrind, start_timeout=300)  # valgrind starts slowly
        try:
            bench_mllp.drive(port, args.senders, WARM_UP, "warm")
            _control(engine.pid, True)
            bench_mllp.drive(port, args.senders, args.messages // args.senders, "m")
            _control(engine.pid, False)
        finally:
            engine.send_signal(signal.SIGTERM)
            engine.wait(timeout=600)
    sent = args.messages // args.senders * args.senders
    counts: dict[str, int] = {}
    for path in sorted(out.glob("cg.out-*")):
        total = next((int(line.split()[1]) for line in path.read_text().splitlines() if line.startswith("totals:")), 0)
        if total:
            counts[f"thread {path.name.rsplit('-', 1)[1]}"] = total // sent
    counts["all"] = sum(counts.values())
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", metavar="DIR", required=True, help="the tree to compare with (before)")
    parser.add_argument("--workflow", action="store_true", help="ORM -> patient, order, worklist step")
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--messages", type=int, default=400, help="counted messages (all senders)")
    parser.add_argument("--with-projector", action="store_true")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind (with callgrind_control) is needed: apt-get install valgrind")
    trees = {"before": Path(args.compare).resolve(), "after": ROOT}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(measure, root, Path(tmp) / name, args) for name, root in trees.items()}
        results = {name: future.result() for name, future in futures.items()}
    what = "--workflow" if args.workflow else "core"
    print(f"instructions a message, {what}, {args.senders} sender(s), {args.messages} messages;"
          f" before = {trees['before']}, after = {trees['after']}")
    for name in sorted(set(results["before"]) | set(results["after"]), key=lambda k: (k == "all", k)):
        before, after = results["before"].get(name, 0), results["after"].get(name, 0)
        ratio = f"{after / before:.3f}" if before else "-"
        print(f"  {name:<12} {before:>12,} {after:>12,}   after/before {ratio}")


if __name__ == "__main__":
    main()
