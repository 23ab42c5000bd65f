"""Worklist benchmark: radbridge MWL SCP through DCMTK findscu, and the ratio to wlmscpfs.

    /work/main/.venv/bin/python -m bench.bench_worklist [--steps 100000] [--peer-entries 10000]

1. ``--steps`` scheduled steps in SQLite: a targeted query (station AE title + today)
   end to end through ``findscu`` including association (p50/p99), and a broad query
   (every entry of a day) in responses/s, the median of ``--broad-runs`` runs, each
   timed from starting findscu (which prints every response, as it does by default)
   to its exit. Also: the same broad query over ten days, and from SCUs in their own
   processes, timed from association to release: pynetdicom (decodes every response)
   and :mod:`bench.raw_find` (only counts them: the ceiling of the SCP's stream). CPU per response is
   the SCP's user + system time over the runs divided by the responses: radbridge's
   threads in this process, wlmscpfs's process and its children.
2. The same ``--peer-entries`` entries in radbridge and in DCMTK ``wlmscpfs``
   (``.wl`` files written with pydicom): the same two queries, and the ratios.
Figures are printed; this is not a pass/fail gate (PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from sqlalchemy import insert

from channels.dicom.server import start_dicom_server
from engine.config.models import EngineConfig
from engine.domain.tables import orders, patients, procedure_steps, step_station_aes
from engine.store.database import Database
from tests.dicom.conftest import dcmtk_env
from tests.dicom.wlm_peer import start_wlmscpfs, stop

STATIONS = 100
DAYS = 100
RETURN_KEYS = ["PatientName=", "PatientID=", "AccessionNumber=", "StudyInstanceUID=", "RequestedProcedureID=",
               "ScheduledProcedureStepSequence[0].Modality=",
               "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID=",
               "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime="]  # fmt: skip


def _entry(n: int, today: date) -> dict[str, Any]:
    """Entry ``n``: STATIONS entries a day, the first ones today, then over DAYS days around it.

    The first STATIONS entries fall on today whatever ``count`` is, so a small run still has
    entries to match (DAYS // 2 days before today, the earlier arrangement, left none).
    """
    day = today + timedelta(days=(n // STATIONS + DAYS // 2) % DAYS - DAYS // 2)
    return {
        "n": n,
        "ae": f"CT{n % STATIONS:03d}",
        "date": day.strftime("%Y%m%d"),
        "time": f"{8 + n % 10:02d}{n % 60:02d}00",
    }


def populate(db: Database, count: int, today: date) -> None:
    """``count`` steps, ``count // 10`` patients, spread over STATIONS stations and DAYS days."""
    now = datetime.now(UTC)
    entries = [_entry(n, today) for n in range(count)]
    pats = [{"id": i + 1, "patient_id": f"PAT{i:07d}", "issuer": "HOSP", "patient_name": f"FAMILY{i}^GIVEN",
             "birth_date": "19700101", "sex": "O", "status": "ACTIVE", "created_at": now, "updated_at": now}
            for i in range(max(1, count // 10))]  # fmt: skip
    ords = [{"id": e["n"] + 1, "patient_pk": e["n"] % len(pats) + 1, "order_key": f"K{e['n']}",
             "placer_order_number": f"PL{e['n']}", "accession_number": f"ACC{e['n']:08d}",
             "requested_procedure_id": f"RP{e['n']}", "study_instance_uid": f"1.2.826.0.1.3680043.9.{e['n']}",
             "priority": "ROUTINE", "created_at": now, "updated_at": now} for e in entries]  # fmt: skip
    steps = [{"id": e["n"] + 1, "order_pk": e["n"] + 1, "sps_id": f"SPS{e['n']}", "status": "SCHEDULED",
              "modality": "CT", "scheduled_station_ae_title": e["ae"], "start_date": e["date"], "start_time": e["time"],
              "start_datetime": e["date"] + e["time"], "created_at": now, "updated_at": now}
             for e in entries]  # fmt: skip
    aes = [{"step_pk": e["n"] + 1, "ae_title": e["ae"], "start_datetime": e["date"] + e["time"]}
           for e in entries]  # fmt: skip

    def write(conn: Any) -> None:
        for table, rows in (
            (patients, pats),
            (orders, ords),
            (procedure_steps, steps),
            (step_station_aes, aes),
        ):
            for i in range(0, len(rows), 5000):
                conn.execute(insert(table), rows[i : i + 5000])

    db.writer.call(write)


def findscu_seconds(port: int, keys: list[str], aec: str) -> tuple[float, int]:
    """Wall time of one findscu run (process + association + query) and the responses counted."""
    args = ["findscu", "-W", "-v", "-aet", "CT000", "-aec", aec, "127.0.0.1", str(port)]
    for key in [*RETURN_KEYS, *keys]:
        args += ["-k", key]
    t0 = time.perf_counter()
    out = subprocess.run(
        args, env=dcmtk_env(), capture_output=True, check=True, text=True, errors="replace"
    )
    elapsed = time.perf_counter() - t0
    return elapsed, (out.stdout + out.stderr).count(
        "Find Response:"
    )  # -v logs pending responses only


def targeted(port: int, aec: str, day: str, runs: int) -> tuple[float, float, int]:
    keys = ["ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT000",
            f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={day}"]  # fmt: skip
    times = []
    n = 0
    for _ in range(runs):
        t, n = findscu_seconds(port, keys, aec)
        times.append(t)
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000, n


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process's other threads (the SCP's), or of process
    ``pid`` and its reaped children (wlmscpfs forks a child per association).
    """
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime - time.thread_time()  # not this thread's findscu output
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def broad(port: int, aec: str, days: str, runs: int, pid: int | None = None) -> tuple[float, int, float]:
    """Median responses/s, responses, and the SCP's CPU µs per response over all runs."""
    keys = [f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={days}"]
    rates = []
    n = total = 0
    cpu0 = cpu_seconds(pid)
    for _ in range(runs):
        t, n = findscu_seconds(port, keys, aec)
        rates.append(n / t)
        total += n
    return statistics.median(rates), n, (cpu_seconds(pid) - cpu0) / max(total, 1) * 1e6


def client_broad(kind: str, port: int, days: str, runs: int) -> tuple[float, int]:
    """Median responses/s of a ``kind`` SCU ("pynetdicom" or "raw") in its own process (:func:`client_main`)."""
    rates = []
    n = 0
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-m", "bench.bench_worklist", "--client", kind, str(port), days],
                             capture_output=True, check=True, text=True)  # fmt: skip
        count, seconds = out.stdout.split()
        n = int(count)
        rates.append(n / float(seconds))
    return statistics.median(rates), n


def broad_query(days: str) -> Dataset:
    """The broad query's identifier: RETURN_KEYS, SPS start date ``days``."""
    query = Dataset()
    query.PatientName, query.PatientID, query.AccessionNumber, query.StudyInstanceUID = "", "", "", ""
    query.RequestedProcedureID = ""
    sps = Dataset()
    sps.Modality, sps.ScheduledProcedureStepID, sps.ScheduledProcedureStepStartTime = "", "", ""
    sps.ScheduledProcedureStepStartDate = days
    query.ScheduledProcedureStepSequence = [sps]
    return query


def client_main(kind: str, port: int, days: str) -> None:
    """One broad query: print the pending responses and the seconds from association to release."""
    from pynetdicom import AE

    from bench.raw_find import raw_find

    t0 = time.perf_counter()
    if kind == "raw":
        n = raw_find(port, broad_query(days))
    else:
        ae = AE(ae_title="CT000")
        ae.add_requested_context("1.2.840.10008.5.1.4.31")
        assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
        n = sum(1 for status, _ in assoc.send_c_find(broad_query(days), "1.2.840.10008.5.1.4.31")
                if status and status.Status in (0xFF00, 0xFF01))  # fmt: skip
        assoc.release()
    print(n, time.perf_counter() - t0)


def radbridge(tmp: Path, count: int, today: date) -> tuple[Database, Any]:
    db = Database(f"sqlite:///{tmp / f'bench{count}.db'}", sqlite_synchronous="NORMAL")
    db.migrate()
    t0 = time.perf_counter()
    populate(db, count, today)
    print(f"  populated {count} steps in {time.perf_counter() - t0:.1f}s")
    cfg = EngineConfig.model_validate(
        {"dicom": {"port": 0}, "worklist": {"max_matches": 1_000_000}}
    )
    return db, start_dicom_server(cfg, db)


def write_wl_files(count: int, today: date, root: Path) -> Path:
    """The same entries as :func:`populate`, one ``.wl`` file each (pydicom; dump2dcm is too slow for 10,000)."""
    folder = root / "RADBRIDGE"
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()
    for n in range(count):
        e = _entry(n, today)
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID = (
            f"FAMILY{n % max(1, count // 10)}^GIVEN",
            f"PAT{n % max(1, count // 10):07d}",
        )
        ds.AccessionNumber, ds.RequestedProcedureID = f"ACC{n:08d}", f"RP{n}"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.{n}"
        sps = Dataset()
        sps.Modality, sps.ScheduledStationAETitle, sps.ScheduledProcedureStepID = (
            "CT",
            e["ae"],
            f"SPS{n}",
        )
        sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime = (
            e["date"],
            e["time"],
        )
        sps.ScheduledProcedureStepStatus = "SCHEDULED"
        ds.ScheduledProcedureStepSequence = [sps]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
        ds.save_as(
            folder / f"e{n}.wl", enforce_file_format=False, implicit_vr=False, little_endian=True
        )
    return root


def ratio(numerator: float, denominator: float) -> str:
    """``numerator / denominator`` as ``1.2x``; ``n/a`` when either is zero (nothing matched: no rate)."""
    return f"{numerator / denominator:.1f}x" if numerator and denominator else "n/a (no responses)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--peer-entries", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--broad-runs", type=int, default=7)
    parser.add_argument("--client", nargs=3, metavar=("KIND", "PORT", "DATES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client[0], int(args.client[1]), args.client[2])
        return
    today = date.today()
    day = today.strftime("%Y%m%d")
    ten_days = f"{day}-{today + timedelta(days=9):%Y%m%d}"
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        print(f"radbridge, {args.steps} steps:")
        db, server = radbridge(tmp, args.steps, today)
        p50, p99, n = targeted(server.port, "RADBRIDGE", day, args.runs)
        print(
            f"  targeted (AE + today, {n} matches) via findscu: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )
        rate, n, cpu = broad(server.port, "RADBRIDGE", day, args.broad_runs)
        print(f"  broad (today, {n} matches) via findscu: {rate:.0f} responses/s, SCP CPU {cpu:.0f} µs/response")
        rate, n, cpu = broad(server.port, "RADBRIDGE", ten_days, max(3, args.broad_runs // 2))
        print(f"  broad (10 days, {n} matches) via findscu: {rate:.0f} responses/s, SCP CPU {cpu:.0f} µs/response")
        for kind, days, label in (("pynetdicom", day, "today"), ("raw", day, "today"), ("raw", ten_days, "10 days")):
            rate, n = client_broad(kind, server.port, days, max(3, args.broad_runs // 2))
            print(f"  broad ({label}, {n} matches) via {kind} SCU, association to release: {rate:.0f} responses/s")
        server.stop()
        db.close()
        print(f"same {args.peer_entries} entries, radbridge vs wlmscpfs:")
        db, server = radbridge(tmp, args.peer_entries, today)
        proc, port = start_wlmscpfs(write_wl_files(args.peer_entries, today, tmp / "wl"))
        try:
            rb_t = targeted(server.port, "RADBRIDGE", day, args.runs)
            wl_t = targeted(port, "RADBRIDGE", day, max(3, args.runs // 4))
            rb_b = broad(server.port, "RADBRIDGE", day, args.broad_runs)
            wl_b = broad(port, "RADBRIDGE", day, args.broad_runs, proc.pid)
        finally:
            stop(proc)
            server.stop()
            db.close()
        print(f"  targeted p50: radbridge {rb_t[0]:.1f} ms ({rb_t[2]} matches), wlmscpfs {wl_t[0]:.1f} ms "
              f"({wl_t[2]} matches): wlmscpfs/radbridge = {ratio(wl_t[0], rb_t[0])}")  # fmt: skip
        print(f"  broad: radbridge {rb_b[0]:.0f}/s ({rb_b[1]}), wlmscpfs {wl_b[0]:.0f}/s ({wl_b[1]}): "
              f"radbridge/wlmscpfs = {ratio(rb_b[0], wl_b[0])}")  # fmt: skip
        print(f"  SCP CPU per broad response: radbridge {rb_b[2]:.0f} µs, wlmscpfs {wl_b[2]:.0f} µs")


if __name__ == "__main__":
    main()
