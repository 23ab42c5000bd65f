"""Reports end to end: ORU^R01 in → report version stored → ORU^R01 out to a recording EHR, durable.

The engine runs as a subprocess on the shipped mappings (SQLite, ``FULL`` commit
before every ACK and every delivery's outcome recorded durably), with an orders
channel, a reports channel and one receiver, the EHR: a recording MLLP peer in
its own process that checks each ORU^R01 (ORC-1 RE, OBR-25 F) and answers AA.
First the orders are loaded (not timed); then senders, each a synchronous MLLP
client in its own process, send one final report per order. The clock runs from
the first report sent until the EHR has received the last ORU^R01.

    python bench/bench_reports.py                   # 2,000 reports, 4 senders
    python bench/bench_reports.py --reports 5000 --senders 8

Prints reports/s end to end (the issue's target: ≥ 500), the ACK rate seen by the
senders, p50/p99 of the inbound ACK, and the engine's CPU time per report.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_mllp import cpu_seconds, free_port, pct, wait_port  # noqa: E402

ORM = (
    "MSH|^~\\&|EHR|HOSP|RADBRIDGE|RAD|20261205083000||ORM^O01^ORM_O01|O{n}|P|2.5.1\r"
    "PID|1||P{pid}^^^HOSP^MR||DOE^JANE^Q||19700101|F\r"
    "ORC|NW|PL{n}^EHR|F{n}^RIS||SC||^^^20261205090000^^R\r"
    "OBR|1|PL{n}^EHR|F{n}^RIS|CT1^CT HEAD^L|||20261205083000|||||||||||A{n}|RP{n}|SPS{n}||||CT\r"
)
ORU = (
    "MSH|^~\\&|REPORTING|RAD|RADBRIDGE|RAD|20261205100000||ORU^R01^ORU_R01|R{n}|P|2.5.1|||||UNICODE UTF-8\r"
    "PID|1||P{pid}^^^HOSP^MR||DOE^JANE^Q\r"
    "OBR|1|PL{n}^EHR|F{n}^RIS|CT1^CT HEAD^L|||20261205093000|||||||||||A{n}||||20261205095900|||F"
    "|||||||RR1&Radiologist&Rita\r"
    "OBX|1|TX|GDT^Findings||No acute intracranial haemorrhage.||||||F\r"
    "OBX|2|TX|GDT^Findings||Ventricles and sulci normal for age.||||||F\r"
    "OBX|3|TX|IMP^Impression||Normal CT head.||||||F\r"
)


def ehr(port: int, received: Synchronized, bad: Synchronized) -> None:  # type: ignore[type-arg]
    """The recording EHR: counts ORU^R01 frames, checks two fields, answers AA with MSA-2 = MSH-10."""
    import asyncio

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        while data := await reader.read(65536):
            buf += data
            while b"\x1c\r" in buf:
                frame, buf = buf.split(b"\x1c\r", 1)
                text = frame.lstrip(b"\x0b").decode("utf-8")
                segs = {line.split("|")[0]: line.split("|") for line in text.split("\r") if line}
                if segs["ORC"][1] != "RE" or segs["OBR"][25] != "F":
                    bad.value += 1
                received.value += 1
                cid = segs["MSH"][9]
                writer.write(b"\x0bMSH|^~\\&|EHR|HOSP|RADBRIDGE|RAD|20261205||ACK^R01^ACK|A" + cid.encode()
                             + b"|P|2.5.1\rMSA|AA|" + cid.encode() + b"\r\x1c\r")
            await writer.drain()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def send(port: int, template: str, numbers: range, out: mp.Queue) -> None:  # type: ignore[type-arg]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies = []
    for n in numbers:
        frame = b"\x0b" + template.format(n=n, pid=n % 500).encode() + b"\x1c\r"
        t0 = time.perf_counter()
        sock.sendall(frame)
        buf = b""
        while not buf.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        if b"MSA|AA" not in buf:
            raise RuntimeError(f"not accepted: {buf[:300]!r}")
        latencies.append(time.perf_counter() - t0)
    out.put(latencies)
    sock.close()


def drive(port: int, template: str, total: int, senders: int) -> list[float]:
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    share = total // senders
    procs = [mp.Process(target=send, args=(port, template, range(s * share, (s + 1) * share), queue))
             for s in range(senders)]
    for p in procs:
        p.start()
    latencies = [lat for _ in procs for lat in queue.get()]
    for p in procs:
        p.join()
    return latencies


def start_engine(tmp: Path, orders: int, reports: int, ehr_port: int) -> subprocess.Popen[bytes]:
    cfg = tmp / "config"
    (cfg / "channels").mkdir(parents=True)
    (cfg / "engine.yaml").write_text(
        f"data_dir: {tmp / 'var'}\nlogging: {{level: WARNING}}\ndatabase: {{sqlite_synchronous: FULL}}\n"
        f"mappings_dir: {ROOT / 'mappings'}\ndicom: {{enabled: false}}\noutbox: {{poll_interval_seconds: 0.2}}\n"
        f"reports: {{receivers: [{{name: ehr, mllp: '127.0.0.1:{ehr_port}'}}]}}\n")
    (cfg / "channels" / "ris.yaml").write_text(
        f"name: ris\nsource: {{type: mllp, port: {orders}}}\nmapping: [adt-to-patient, order-to-worklist]\n"
        "handlers: [patients, orders, reports]\n")
    (cfg / "channels" / "reports.yaml").write_text(
        f"name: reports\nsource: {{type: mllp, port: {reports}}}\nmapping: [oru-to-report]\nhandlers: [reports]\n")
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "--config", str(cfg), "run"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(orders)
    wait_port(reports)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=2000, help="orders loaded, then one report each")
    parser.add_argument("--senders", type=int, default=4)
    args = parser.parse_args()
    total = args.reports - args.reports % args.senders
    received, bad = mp.Value("i", 0), mp.Value("i", 0)
    ehr_port, orders_port, reports_port = free_port(), free_port(), free_port()
    peer = mp.Process(target=ehr, args=(ehr_port, received, bad), daemon=True)
    peer.start()
    wait_port(ehr_port)
    with tempfile.TemporaryDirectory() as tmp:
        engine = start_engine(Path(tmp), orders_port, reports_port, ehr_port)
        try:
            drive(orders_port, ORM, total, args.senders)
            cpu0, start = cpu_seconds(engine.pid), time.perf_counter()
            latencies = drive(reports_port, ORU, total, args.senders)
            acked = time.perf_counter() - start
            deadline = time.monotonic() + 300
            while received.value < total and time.monotonic() < deadline:
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
            cpu = cpu_seconds(engine.pid) - cpu0
            with sqlite3.connect(Path(tmp) / "var" / "radbridge.db") as db:
                versions = db.execute("SELECT count(*) FROM report_versions").fetchone()[0]
                sent = db.execute("SELECT count(*) FROM outbox WHERE destination = 'ehr' AND status = 'SENT'"
                                  ).fetchone()[0]
        finally:
            engine.terminate()
            engine.wait(30)
            peer.terminate()
    print(f"{total} reports, {args.senders} senders, SQLite FULL")
    print(f"end to end (first ORU in -> last ORU^R01 at the EHR): {total / elapsed:,.0f} reports/s ({elapsed:.2f} s)")
    print(f"inbound ACKs: {total / acked:,.0f} reports/s, p50 {pct(latencies, 0.5):.2f} ms, "
          f"p99 {pct(latencies, 0.99):.2f} ms")
    print(f"engine CPU: {cpu / total * 1e6:,.0f} µs a report (in and out)")
    print(f"EHR received {received.value} (bad {bad.value}); versions stored {versions}; outbox SENT {sent}")
    if received.value < total or bad.value or versions != total:
        raise SystemExit("not every report arrived intact")


if __name__ == "__main__":
    main()
