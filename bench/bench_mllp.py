"""MLLP receive path benchmark: radbridge (durable SQLite commit before ACK) vs a bare ACK server.

Both servers run as subprocesses on loopback in the same run; senders are
separate processes, each a synchronous client (send, wait for the ACK, repeat)
with a 5-segment ORM^O01 and a unique MSH-10 per message.

    python bench/bench_mllp.py                 # quick: 5,000 msgs/sender config
    python bench/bench_mllp.py --messages 5000 --memory 100000   # + RSS over 100,000 more
    python bench/bench_mllp.py --workflow      # ORM -> patient, order, worklist step (issue 4 target)
    python bench/bench_mllp.py --compare ../wt-before --rounds 7 [--workflow]   # A/B against another tree
    python bench/bench_mllp.py --compare ../wt-before --workflow --without-projector   # the order path alone

Prints throughput (median of --runs), p50/p99 latency and the server process's
CPU time per message (user + system, all threads) for one sender, the ratio to
the bare server, and with --memory the engine's RSS over time. With --workflow
it checks afterwards that every order became a worklist entry.

With ``--compare DIR`` it measures this tree's engine against the engine of the
checkout DIR (run with DIR's own ``.venv`` and mappings), interleaved: each of
``--rounds`` pairs starts a fresh engine of each tree in turn (which goes first
alternates), warms it up, measures 1 and 8 senders and stops it. It prints the
median and range of each side and of the per-pair ratios (this tree / DIR), for
throughput and for the engine's CPU time per message; on a shared machine the
CPU time per message and the within-pair ratios are the robust figures.

``--without-projector`` runs the engines without the FHIR projector (#14), which otherwise turns
every order of ``--workflow`` into stored FHIR resources in the same process and so counts in
its CPU a message: the order path is then measured alone (the change-feed triggers still fire).
A tree without the projector runs as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORM = (
    "MSH|^~\\&|RIS|HOSP|RADBRIDGE|RAD|20261122083000||ORM^O01^ORM_O01|{cid}|P|2.5.1\r"
    "PID|1||{pid}^^^HOSP^MR||DOE^JANE^Q||19700101|F\r"
    "PV1|1|O|RAD^^^HOSP||||1234^REFERRING^DOC\r"
    "ORC|NW|P{cid}|F{cid}||SC||^^^20261122090000^^R\r"
    "OBR|1|P{cid}|F{cid}|CT1^CT HEAD^L|||20261122083000|||||||||||A{cid}|RP{cid}|SPS{cid}||||CT\r"
)

BARE_SERVER = r"""
import asyncio, sys
ACK = b"\x0bMSH|^~\\&|B|B|A|A|20260101||ACK^O01^ACK|1|P|2.5.1\rMSA|AA|1\r\x1c\r"
async def handle(reader, writer):
    buf = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        buf += data
        while b"\x1c\r" in buf:
            _, buf = buf.split(b"\x1c\r", 1)
            writer.write(ACK)
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


#: ``radbridge run`` with the FHIR projector replaced by one that does nothing (``--without-projector``).
NO_PROJECTOR = """
import sys
try:
    import channels.fhir.wiring as wiring
except ImportError:  # a tree from before the FHIR API
    wiring = None
if wiring is not None:
    class _Off:
        async def stop(self) -> None:
            pass
    async def _off(*args):
        return _Off()
    wiring.start_projector = _off
from engine.cli.main import main
sys.exit(main())
"""


def sender(port: int, prefix: str, count: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        cid = f"{prefix}{i}"
        frame = b"\x0b" + ORM.format(cid=cid, pid=f"P{i % 500}").encode() + b"\x1c\r"
        t0 = time.perf_counter()
        sock.sendall(frame)
        buf = b""
        while not buf.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        if b"MSA|AA" not in buf:
            raise RuntimeError(f"not accepted: {buf[:200]!r}")
        latencies.append(time.perf_counter() - t0)
    out.put((time.perf_counter() - start, latencies))
    sock.close()


def drive(port: int, senders: int, per_sender: int, tag: str) -> tuple[float, list[float]]:
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [mp.Process(target=sender, args=(port, f"{tag}-{s}-", per_sender, queue)) for s in range(senders)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    latencies = [lat for _, lats in results for lat in lats]
    return senders * per_sender / elapsed, latencies


def start_engine(
    tmp: Path, port: int, workflow: bool, root: Path = ROOT, projector: bool = True,
    prefix: Sequence[str] = (), start_timeout: float = 30,
) -> subprocess.Popen[bytes]:
    """``radbridge run`` of the checkout ``root`` (its .venv's Python if it has one) on a fresh data dir.

    ``prefix``: a command to run it under (``bench_instructions``: valgrind).
    """
    cfg = tmp / "config"
    (cfg / "channels").mkdir(parents=True)
    sync = os.environ.get("RB_SYNC", "FULL")
    (cfg / "engine.yaml").write_text(
        f"data_dir: {tmp / 'var'}\nlogging: {{level: WARNING}}\ndatabase: {{sqlite_synchronous: {sync}}}\n"
        f"mappings_dir: {root / 'mappings'}\ndicom: {{enabled: false}}\n")
    domain = "mapping: [adt-to-patient, order-to-worklist]\nhandlers: [patients, orders]\n" if workflow else ""
    (cfg / "channels" / "bench.yaml").write_text(
        f"name: bench\nsource: {{type: mllp, port: {port}}}\nduplicates: {{window_hours: 72}}\n{domain}")
    env = {**os.environ, "PYTHONPATH": str(root)}
    venv = root / ".venv" / "bin" / "python"
    python = str(venv) if root != ROOT and venv.exists() else sys.executable
    entry = ["-m", "engine.cli.main"] if projector else ["-c", NO_PROJECTOR]
    proc = subprocess.Popen([*prefix, python, *entry, "--config", str(cfg), "run"], cwd=root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, start_timeout)
    return proc


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, pid: int, args: argparse.Namespace, tag: str) -> dict[str, float]:
    """Throughput and latency; also the server's CPU time per message (less sensitive to a busy machine)."""
    cpu0 = cpu_seconds(pid)
    one = [drive(port, 1, args.messages, f"{tag}1r{r}") for r in range(args.runs)]
    cpu1 = cpu_seconds(pid)
    eight = [drive(port, 8, args.messages // 8, f"{tag}8r{r}")[0] for r in range(args.runs)]
    cpu8 = cpu_seconds(pid)
    lat = one[len(one) // 2][1]
    sent_one, sent_eight = args.runs * args.messages, args.runs * (args.messages // 8) * 8
    return {"one": statistics.median(r[0] for r in one), "eight": statistics.median(eight),
            "best_one": max(r[0] for r in one), "best_eight": max(eight),
            "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
            "cpu_one": (cpu1 - cpu0) / sent_one * 1e6, "cpu_eight": (cpu8 - cpu1) / sent_eight * 1e6}



def worklist_steps(tmp: Path) -> int:
    """Scheduled procedure steps in the engine's database (each --workflow ORM should add one)."""
    with contextlib.closing(sqlite3.connect(tmp / "var" / "radbridge.db")) as db:
        return int(db.execute("SELECT count(*) FROM procedure_steps").fetchone()[0])


def memory_run(port: int, pid: int, total: int) -> list[tuple[int, float, float]]:
    """(messages sent so far, engine RSS MB, messages/s of the last 10,000 from 2 senders) every 10,000."""
    samples = [(0, rss_mb(pid), 0.0)]
    step = 10_000
    for done in range(step, total + 1, step):
        rate, _ = drive(port, 2, step // 2, f"mem{done}")
        samples.append((done, rss_mb(pid), rate))
    return samples


def measure_once(port: int, pid: int, senders: int, per_sender: int, tag: str) -> tuple[float, float]:
    """(messages/s, engine CPU µs a message) of one run."""
    cpu0 = cpu_seconds(pid)
    rate, _ = drive(port, senders, per_sender, tag)
    return rate, (cpu_seconds(pid) - cpu0) / (senders * per_sender) * 1e6


def compare(args: argparse.Namespace) -> None:
    """Interleaved A/B: this tree against ``args.compare``; prints medians, ranges and pair ratios.

    Both engines run side by side for the whole comparison (each on a fresh data directory,
    warmed up with 500 messages); each round measures 1 sender on one engine, then on the
    other, then 8 senders likewise, the order alternating from round to round, so a pair's
    two runs are seconds apart and a slow spell of a shared machine hits both sides alike.
    """
    trees = {"before": Path(args.compare).resolve(), "after": ROOT}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    with contextlib.ExitStack() as stack:
        projector = not args.without_projector
        engines = {name: stack.enter_context(_running(root, args.workflow, projector)) for name, root in trees.items()}
        for name, (port, _, _) in engines.items():
            drive(port, 1, 500, f"{name}w")  # imports, caches, the first 500 patients
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for senders, key in ((1, "one"), (8, "eight")):
                for name in order:
                    port, pid, _ = engines[name]
                    rate, cpu = measure_once(port, pid, senders, args.messages // senders, f"{name}{r}s{senders}")
                    results[name].setdefault(key, []).append(rate)
                    results[name].setdefault(f"cpu_{key}", []).append(cpu)
            b, a = results["before"], results["after"]
            print(f"round {r + 1}: " + "  ".join(f"{k} {b[k][-1]:.0f}->{a[k][-1]:.0f}" for k in b), flush=True)
        if args.workflow:  # every order became a worklist step on both sides (else the figures mean nothing)
            sent = 500 + args.rounds * (args.messages + args.messages // 8 * 8)
            for name, (_, _, tmp) in engines.items():
                if (steps := worklist_steps(tmp)) != sent:
                    raise SystemExit(f"{trees[name]}: {steps} worklist steps for {sent} orders")
    print(f"\nbefore = {trees['before']}, after = {ROOT}; {args.rounds} interleaved pairs, {args.messages} messages"
          f" per configuration{' (--workflow)' if args.workflow else ''}"
          f"{' without the projector' if args.without_projector else ''}; median [min-max]")
    print(f"{'':28}{'before':>22}{'after':>22}{'after/before':>22}")
    labels = {"one": "1 sender msgs/s", "eight": "8 senders msgs/s", "cpu_one": "1 sender CPU µs/msg",
              "cpu_eight": "8 senders CPU µs/msg"}
    for key, label in labels.items():
        before, after = results["before"][key], results["after"][key]
        ratios = [a / b for a, b in zip(after, before, strict=True) if b]
        print(f"{label:28}{spread(before, '.0f'):>22}{spread(after, '.0f'):>22}{spread(ratios, '.3f'):>22}")


@contextlib.contextmanager
def _running(root: Path, workflow: bool, projector: bool = True) -> Iterator[tuple[int, int, Path]]:
    """(port, pid, data directory) of an engine of ``root`` on a fresh data directory, stopped afterwards."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        engine = start_engine(Path(tmp), port, workflow, root, projector)
        try:
            yield port, engine.pid, Path(tmp)
        finally:
            engine.terminate()
            engine.wait(20)


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000, help="messages per configuration and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workflow", action="store_true",
                        help="the shipped mappings and the patients/orders handlers: each ORM becomes a worklist entry")
    parser.add_argument("--memory", type=int, default=0, metavar="N",
                        help="afterwards send N more messages (2 senders); RSS and rate every 10,000")
    parser.add_argument("--compare", metavar="DIR",
                        help="A/B: interleave this tree's engine with the checkout DIR's (no bare server)")
    parser.add_argument("--without-projector", action="store_true",
                        help="run the engines without the FHIR projector: the order path alone (see above)")
    parser.add_argument("--rounds", type=int, default=5, help="with --compare: pairs of runs")
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    bare_port, rb_port = free_port(), free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)])
    with tempfile.TemporaryDirectory() as tmp:
        engine = start_engine(Path(tmp), rb_port, args.workflow, projector=not args.without_projector)
        try:
            wait_port(bare_port)
            peer = measure(bare_port, bare.pid, args, "bare")
            ours = measure(rb_port, engine.pid, args, "rb")
            samples = memory_run(rb_port, engine.pid, args.memory) if args.memory else []
        finally:
            engine.terminate()
            bare.terminate()
            engine.wait(20)
            bare.wait(20)
        steps = worklist_steps(Path(tmp)) if args.workflow else 0
    if args.workflow:  # an order the handlers ignore (e.g. no modality) would make the figures meaningless
        sent = args.runs * (args.messages + args.messages // 8 * 8) + args.memory
        print(f"worklist steps created: {steps} for {sent} orders")
        if steps != sent:
            raise SystemExit("not every order became a worklist entry")
    print(f"{'':28}{'radbridge':>12}{'bare ACK':>12}{'ratio':>8}")
    print(f"(median of {args.runs} runs; best run in brackets; server CPU = user + system time per message)")
    for key, label in (("one", "1 sender msgs/s"), ("eight", "8 senders msgs/s")):
        best = f"[{ours['best_' + key]:.0f}]"
        print(f"{label:28}{ours[key]:12.0f}{peer[key]:12.0f}{ours[key] / peer[key]:8.2f}  {best}")
    for key, label in (("p50", "1 sender p50 ms"), ("p99", "1 sender p99 ms")):
        print(f"{label:28}{ours[key]:12.2f}{peer[key]:12.2f}{ours[key] / max(peer[key], 1e-9):8.1f}")
    for key, label in (("cpu_one", "1 sender server CPU µs/msg"), ("cpu_eight", "8 senders server CPU µs/msg")):
        ratio = f"{ours[key] / peer[key]:8.1f}" if peer[key] else f"{'-':>8}"  # ticks: a short run may show 0
        print(f"{label:28}{ours[key]:12.0f}{peer[key]:12.0f}{ratio}")
    for done, mb, rate in samples:  # the rate shows whether a growing database slows the path
        print(f"rss after {done:>7} messages: {mb:7.1f} MB" + (f", last 10,000 at {rate:.0f} msgs/s" if done else ""))


if __name__ == "__main__":
    main()
