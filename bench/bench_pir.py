"""PIR benchmark: does an A08 correcting 1,000 stored instances slow C-STORE and MLLP ACKs?

    .venv/bin/python -m bench.bench_pir [--stored 1000] [--probes 150] [--batch N] [--yield-ratio R]

``radbridge run`` (no destination) stores ``--stored`` instances of one patient
(bench_store.write_instances, 512 KB each) matched to an order. Then two phases, each
sending ``--probes`` C-STORE requests of new instances (pynetdicom SCU, one association,
one at a time, timed) while another thread sends ``--probes`` ORM^O01 over MLLP (one
connection, each timed to its ACK):

- baseline: nothing else runs;
- corrections: an A08 for the patient has just been acknowledged, so the
  ``reconcile-images`` job rewrites the stored instances while the probes run.

Prints p50/p99 of each latency in both phases and the ratio corrections/baseline of the
p99 (issue #13 asks for at most 1.2), and how long the correction took. Not a pass/fail gate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import hl7
from hl7.mllp import open_hl7_connection
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from bench.bench_store import write_instances
from tests.conftest import ROOT, EngineProcess, free_port, wait_for_port

PID = "BENCH1"


def _orm(n: int) -> str:
    obr = f"OBR|1|PL{n}|FL{n}|CTHEAD^CT head^L" + "|" * 14 + f"ACC{n}|RP{n}|SPS{n}" + "|" * 4 + "CT"
    return "\r".join([
        f"MSH|^~\\&|RIS|NORTH|RADBRIDGE|NORTH|20261205080000||ORM^O01|B{n}|P|2.5.1",
        f"PID|1||{PID}^^^NORTH^MR||BENCH^PATIENT||19600101|M",
        f"ORC|NW|PL{n}|FL{n}||SC||^^^20261205093000^^R", obr]) + "\r"


def _a08(name: str) -> str:
    return "\r".join(["MSH|^~\\&|HIS|NORTH|RADBRIDGE|NORTH|20261205100000||ADT^A08^ADT_A01|A08X|P|2.5.1",
                      "EVN|A08|20261205100000", f"PID|1||{PID}^^^NORTH^MR||{name}||19600101|M", "PV1|1|O"]) + "\r"


async def _mllp(port: int, messages: list[str]) -> list[float]:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    out = []
    for text in messages:
        t0 = time.perf_counter()
        writer.writemessage(hl7.parse(text))
        await writer.drain()
        await reader.readmessage()
        out.append(time.perf_counter() - t0)
    writer.close()
    return out


def _stores(port: int, files: list[Path]) -> list[float]:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    out = []
    for f in files:
        ds = dcmread(f)
        t0 = time.perf_counter()
        status = assoc.send_c_store(ds)
        out.append(time.perf_counter() - t0)
        assert status.Status == 0, hex(status.Status)
    assoc.release()
    return out


def _retag(files: list[Path]) -> None:
    """Give the instances the bench patient, the order's accession, a study and series of their own."""
    study, series = generate_uid(), generate_uid()
    for f in files:
        ds = dcmread(f)
        ds.PatientID, ds.PatientName, ds.AccessionNumber = PID, "X^Y", "ACC0"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(f)


def _phase(mllp: int, dicom: int, files: list[Path], first: int) -> tuple[list[float], list[float]]:
    acks: list[float] = []
    thread = threading.Thread(target=lambda: acks.extend(asyncio.run(
        _mllp(mllp, [_orm(first + i) for i in range(len(files))]))))
    thread.start()
    stores = _stores(dicom, files)
    thread.join()
    return stores, acks


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def _pending(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM reconcile_requests").fetchone()[0])


def _pace(args: argparse.Namespace) -> str:
    """The reconcile settings the command line overrides, as more flow-mapping entries."""
    return "".join(f", {key}: {value}" for key, value in (("correction_batch", args.batch),
                                                          ("correction_yield_ratio", args.yield_ratio))
                   if value is not None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=150)
    parser.add_argument("--batch", type=int, default=None, help="reconcile.correction_batch (default: the engine's)")
    parser.add_argument("--yield-ratio", type=float, default=None,
                        help="reconcile.correction_yield_ratio (default: the engine's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_instances(args.stored + 2 * args.probes, root / "in")
        _retag(files[:args.stored])
        config, data = root / "config", root / "var"
        (config / "channels").mkdir(parents=True)
        data.mkdir()
        mllp, dicom = free_port(), free_port()
        (config / "engine.yaml").write_text(f"data_dir: {data}\nmappings_dir: {ROOT / 'mappings'}\n"
                                            f"dicom: {{port: {dicom}}}\n"
                                            f"reconcile: {{poll_interval_seconds: 0.2{_pace(args)}}}\n")
        (config / "channels" / "ris.yaml").write_text(
            f"name: ris\nsource: {{type: mllp, port: {mllp}}}\naccept: {{message_types: ['ADT^*', 'ORM^O01']}}\n"
            "mapping: [adt-to-patient, order-to-worklist]\nhandlers: [patients, orders]\n")
        engine = EngineProcess(config, data, {**os.environ, "PYTHONPATH": str(ROOT), "RADBRIDGE_DATA_DIR": str(data)})
        engine.start(wait_port=mllp)
        try:
            wait_for_port(dicom, proc=engine.proc)
            asyncio.run(_mllp(mllp, [_orm(0)]))
            _stores(dicom, files[:args.stored])
            probes = files[args.stored:]
            base = _phase(mllp, dicom, probes[:args.probes], 1000)
            asyncio.run(_mllp(mllp, [_a08("BENCH^CORRECTED")]))
            t0 = time.monotonic()
            loaded = _phase(mllp, dicom, probes[args.probes:], 2000)
            overlapped = _pending(data / "radbridge.db") > 0
            while _pending(data / "radbridge.db"):
                time.sleep(0.1)
            took = time.monotonic() - t0
        finally:
            engine.stop()
    for what, i in (("C-STORE", 0), ("MLLP ACK", 1)):
        b99, l99 = _p(base[i], 99), _p(loaded[i], 99)
        print(f"{what:9} baseline p50 {_p(base[i], 50):7.1f} ms p99 {b99:7.1f} ms | during corrections"
              f" p50 {_p(loaded[i], 50):7.1f} ms p99 {l99:7.1f} ms | p99 ratio {l99 / b99:.2f}")
    print(f"correction of {args.stored} instances took {took:.1f} s after the A08"
          f" ({'still running when the probes ended' if overlapped else 'finished before the probes ended'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
