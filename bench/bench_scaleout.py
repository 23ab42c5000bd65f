"""Scale-out benchmark: orders/s with one and with two engine processes on one PostgreSQL behind HAProxy.

The deployment of docs/deployment.md on loopback: a throw-away PostgreSQL
cluster (fsync and full_page_writes on, synchronous_commit on: every ACK
waits for a durable commit), ``radbridge run`` processes with the shipped
mappings and the patients/orders handlers (ORM^O01 -> patient, order,
worklist step), and HAProxy (``mode tcp``, round robin) in front of them.
Senders are separate processes, each a synchronous MLLP client on its own
connection (send, wait for AA, repeat) with its own patients; HAProxy spreads
the connections over the engines.

    python bench/bench_scaleout.py                        # 8 senders, 2,000 orders per configuration
    python bench/bench_scaleout.py --orders 20000 --runs 3
    python bench/bench_scaleout.py --generate-accession   # OBR-18 empty: the shared database sequence gives them

Configurations: one engine reached directly (no balancer), one engine behind
HAProxy, two engines behind HAProxy; each on a fresh database. Prints
orders/s (median of --runs; best in brackets), p50/p99 latency, the CPU time
per order of the engines and of PostgreSQL, and the ratio of two engines to
one. On a machine with fewer cores than engines + PostgreSQL + senders need,
the ratio says more about the cores than about radbridge; run it where each
engine has a core of its own. Afterwards it checks that every order became a
worklist step and that accession numbers are unique.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, select, text  # noqa: E402

from engine.domain.tables import orders, procedure_steps  # noqa: E402
from tests.conftest import PostgresServer, running_postgres  # noqa: E402
from tests.integration.scaleout import HAProxy, Node, make_node, start_nodes  # noqa: E402

ORM = (
    "MSH|^~\\&|RIS|HOSP|RADBRIDGE|RAD|20261122083000||ORM^O01^ORM_O01|{cid}|P|2.5.1\r"
    "PID|1||{pid}^^^HOSP^MR||DOE^JANE^Q||19700101|F\r"
    "PV1|1|O|RAD^^^HOSP||||1234^REFERRING^DOC\r"
    "ORC|NW|P{cid}|||SC||^^^{start}^^R\r"
    "OBR|1|P{cid}||CT1^CT HEAD^L|||20261122083000|||||||||||{accession}|RP{cid}|SPS{cid}||||CT\r"
)


def sender(port: int, prefix: str, count: int, generate: bool, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """One synchronous MLLP client on one connection: ``count`` orders for its own 50 patients."""
    start = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies = []
    began = time.perf_counter()
    for i in range(count):
        cid = f"{prefix}{i}"
        message = ORM.format(cid=cid, pid=f"{prefix}P{i % 50}", start=start, accession="" if generate else f"A{cid}")
        t0 = time.perf_counter()
        sock.sendall(b"\x0b" + message.encode() + b"\x1c\r")
        buf = b""
        while not buf.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        if b"MSA|AA" not in buf:
            raise RuntimeError(f"not accepted: {buf[:300]!r}")
        latencies.append(time.perf_counter() - t0)
    out.put((time.perf_counter() - began, latencies))
    sock.close()


def drive(port: int, senders: int, per_sender: int, tag: str, generate: bool) -> tuple[float, list[float]]:
    """Orders/s over all senders (wall clock from first start to last answer) and every latency."""
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [mp.Process(target=sender, args=(port, f"{tag}{s:02d}-", per_sender, generate, queue))
             for s in range(senders)]
    began = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - began
    for p in procs:
        p.join()
    return senders * per_sender / elapsed, [lat for _, lats in results for lat in lats]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu(server: PostgresServer) -> float:
    """CPU time of the postmaster and every backend it forked (exited backends are not counted)."""
    postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(postmaster)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
    return total


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000


def durable(server: PostgresServer) -> None:
    """Restart the test cluster (which runs without fsync) with PostgreSQL's durable defaults."""
    server.stop()
    server._as_postgres(str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "-w", "-l",
                        str(server.datadir / "server.log"), "-o", f"-p {server.port} -k /tmp -h 127.0.0.1",
                        "start")
    engine = create_engine(server.url())
    with engine.connect() as conn:
        settings = [conn.execute(text(f"SHOW {name}")).scalar() for name in ("fsync", "synchronous_commit")]
    engine.dispose()
    if settings != ["on", "on"]:
        raise SystemExit(f"PostgreSQL not durable: fsync, synchronous_commit = {settings}")


@dataclass(frozen=True)
class Result:
    label: str
    rate: float
    best: float
    p50: float
    p99: float
    engine_cpu: float  # µs an order, all engine processes
    db_cpu: float  # µs an order, PostgreSQL


@contextmanager
def deployment(tmp: Path, url: str, processes: int, balanced: bool) -> Iterator[tuple[int, list[Node]]]:
    """Running engines (and HAProxy when ``balanced``); yields the port senders use."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    nodes = [make_node(tmp / f"node{i}", env, url, None, 120.0, "WARNING") for i in range(processes)]
    balancer = HAProxy(tmp / "haproxy", {"mllp": [n.mllp_port for n in nodes]}) if balanced else None
    try:
        start_nodes(nodes)
        if balancer is not None:
            balancer.start()
            for i in range(1, processes + 1):
                balancer.wait_until("mllp", f"rb{i}", "UP")
        yield (balancer.ports["mllp"] if balancer else nodes[0].mllp_port), nodes
    finally:
        if balancer is not None:
            balancer.stop()
        for node in nodes:
            node.engine.stop()


def check(url: str, sent: int) -> None:
    """Every order became a worklist step; accession numbers are unique."""
    engine = create_engine(url)
    with engine.connect() as conn:
        steps = conn.execute(select(func.count()).select_from(procedure_steps)).scalar()
        numbers = conn.execute(select(func.count(), func.count(orders.c.accession_number.distinct()))).one()
    engine.dispose()
    if steps != sent or numbers[0] != sent or numbers[1] != sent:
        raise SystemExit(f"{sent} orders sent: {steps} worklist steps, {numbers[0]} orders, "
                         f"{numbers[1]} distinct accession numbers")


def measure(server: PostgresServer, tmp: Path, label: str, processes: int, balanced: bool,
            args: argparse.Namespace) -> Result:
    url = server.create_database(f"bench_{processes}_{int(balanced)}_{os.getpid()}")
    per_sender = args.orders // args.senders
    with deployment(tmp / f"p{processes}b{int(balanced)}", url, processes, balanced) as (port, nodes):
        drive(port, args.senders, 20, "w", args.generate_accession)  # connections, caches, first patients
        engine_cpu0, db_cpu0 = sum(cpu_seconds(n.pid) for n in nodes), postgres_cpu(server)
        runs = [drive(port, args.senders, per_sender, f"r{r}", args.generate_accession) for r in range(args.runs)]
        engine_cpu1, db_cpu1 = sum(cpu_seconds(n.pid) for n in nodes), postgres_cpu(server)
    measured = args.runs * per_sender * args.senders
    check(url, measured + 20 * args.senders)
    latencies = sorted(runs, key=lambda r: r[0])[len(runs) // 2][1]
    return Result(label, statistics.median(r[0] for r in runs), max(r[0] for r in runs),
                  pct(latencies, 0.5), pct(latencies, 0.99),
                  (engine_cpu1 - engine_cpu0) / measured * 1e6, (db_cpu1 - db_cpu0) / measured * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000, help="orders per configuration and run")
    parser.add_argument("--senders", type=int, default=8, help="concurrent senders (one connection each)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--generate-accession", action="store_true",
                        help="OBR-18 empty: accession numbers from the shared database sequence")
    args = parser.parse_args()
    if not HAProxy.available():
        raise SystemExit("haproxy not installed (apt-get install haproxy)")
    configurations = [("1 engine, direct", 1, False), ("1 engine, HAProxy", 1, True), ("2 engines, HAProxy", 2, True)]
    with running_postgres() as server, tempfile.TemporaryDirectory() as tmp:
        durable(server)
        results = [measure(server, Path(tmp), label, n, balanced, args) for label, n, balanced in configurations]
    accession = "database sequence" if args.generate_accession else "OBR-18 from the sender"
    print(f"{args.senders} senders, {args.orders // args.senders * args.senders} orders a run, median of "
          f"{args.runs} run(s) [best]; durable PostgreSQL commits; accession numbers: {accession}; "
          f"{os.cpu_count()} CPU(s)")
    print(f"{'':22}{'orders/s':>10}{'[best]':>9}{'p50 ms':>8}{'p99 ms':>8}{'engine µs/order':>17}{'PG µs/order':>13}")
    for r in results:
        print(f"{r.label:22}{r.rate:10.0f}{f'[{r.best:.0f}]':>9}{r.p50:8.2f}{r.p99:8.2f}{r.engine_cpu:17.0f}"
              f"{r.db_cpu:13.0f}")
    one, two = results[1], results[2]
    print(f"two engines / one engine (both behind HAProxy): {two.rate / one.rate:.2f}x")


if __name__ == "__main__":
    main()
