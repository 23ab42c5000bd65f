"""C-STORE benchmark: 512 KB CT instances into radbridge, DCMTK storescp and Orthanc, in one run.

    .venv/bin/python -m bench.bench_store [--count 300] [--concurrency 4] [--runs 3] [--no-orthanc]
                                          [--big-mb 1024] [--orders unscheduled|matched|both]
                                          [--baseline DIR] [--receive-processes 0,2] [--image-associations 100]

The whole benchmark re-executes itself in a private network namespace (``unshare --net``,
then ``ip link set lo up``): Orthanc binds every interface and has no bind option, so it
and every SCU run where only this process can reach them. Each SCP gets the same
``--count`` generated CT instances (pydicom, 512 x 512 x 16 bit, explicit VR little
endian) from DCMTK ``storescu`` (TCP_NODELAY=1): once on one association, once split over
``--concurrency`` storescu processes at the same time. Each figure is images/s from the
first storescu's start to the last one's exit (association set-up included), after a
few warm-up instances on the same SCP; with it, the SCP process's CPU time per image
(user + system, children included, from ``/proc/PID/stat``). ``--runs`` repeats the
whole comparison, the SCPs interleaved (the order rotates each run) so that the load of
a shared machine falls on all of them alike; the summary gives the median of each figure
and the median of the per-run ratios, against the targets of issue #13.

``--image-associations N`` then sends N images on an association each (a ``storescu`` process per
image, one after the other) to every SCP, as modalities that associate for each image do.

``--big-mb`` (0 to skip) then sends one multi-frame CT of that size (default 1 GB) to a
fresh radbridge and reports the engine's resident memory before (idle, after a warm-up
store) and its peak during the transfer (``VmHWM``): the data set must stream to disk.

- radbridge: ``radbridge run`` (a subprocess) with the shipped defaults: SQLite
  ``synchronous=FULL``; every image fsynced and its directory fsynced, then indexed with a
  durable commit, before its success. Reconciliation is on (the shipped ``order-to-image``
  mapping): ``--orders unscheduled`` (the default) sends images no order matches (each is
  looked up, stored as received, its study left unscheduled); ``matched`` creates, before
  the engine starts, the order the images belong to (accession BENCHACC of patient BENCH1),
  so each image is matched, coerced (another Patient's Name, OriginalAttributesSequence),
  staged as a new file and its study linked; ``both`` measures the two as separate SCPs
  (``radbridge`` and ``radbridge+order``) in the same run.
- ``--baseline DIR``: the same radbridge configurations run a second time from the source
  tree ``DIR`` (e.g. ``git archive`` of an older commit, same venv), interleaved with the
  others, for an A/B in one run (``base:radbridge`` ...).
- ``--receive-processes 0,2``: this tree's radbridge once per value of ``dicom.receive_processes``
  (``radbridge/p0`` in one process, ``radbridge/p2`` with two receive workers), same rounds. CPU
  time and memory are those of the engine process and its receive workers together.
- storescp: ``storescp --fork -od DIR`` (writes each file; no fsync).
- Orthanc: the Debian package with a SQLite index (its defaults).

Figures are printed with the ratios radbridge/peer; not a pass/fail gate (PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import free_port, wait_for_port
from tests.dicom.conftest import dcmtk_env

ROOT = Path(__file__).resolve().parent.parent
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_IN_NAMESPACE = "RADBRIDGE_BENCH_IN_NAMESPACE"


def write_instances(count: int, out: Path) -> list[Path]:
    """``count`` CT instances of one study and series, 512 KB of pixel data each."""
    out.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    pixels = os.urandom(512 * 512 * 2)
    paths = []
    for n in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName, ds.Modality, ds.AccessionNumber = "BENCH1", "BENCH^CT", "CT", "BENCHACC"
        ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20261205", 1, n + 1
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        path = out / f"ct{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def storescu_rate(port: int, aec: str, paths: list[Path], senders: int) -> float:
    """images/s: ``senders`` storescu processes at once, each sending its share on one association."""
    shares = [paths[n::senders] for n in range(senders)]
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port), *map(str, share)],
                              env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for share in shares]  # fmt: skip
    failed = [p.communicate()[1].decode(errors="replace")[-500:] for p in procs if p.wait() != 0]
    elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"storescu failed: {failed[0]}")
    return len(paths) / elapsed


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (radbridge's receive workers, storescp's forks)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += parents.get(tree[-1], [])
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid``, its live descendants and their reaped children (``/proc/PID/stat``)."""
    total = 0
    for member in process_tree(pid):
        try:
            total += sum(int(v) for v in _stat(member)[11:15])
        except OSError:  # ended meanwhile: its parent's reaped-children figures count it
            continue
    return total / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int, key: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) in KB, summed over ``pid`` and its live descendants."""
    total = 0
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                total += int(line.split()[1])
    return total


def write_big_instance(megabytes: int, out: Path) -> Path:
    """One multi-frame CT of ``megabytes`` MB of pixel data, written in pieces (never held in memory)."""
    frames = max(1, megabytes * 2)  # 512 x 512 x 16 bit = 512 KB a frame
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.NumberOfFrames, ds.Rows, ds.Columns = "BENCH2", "CT", frames, 512, 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.save_as(out, enforce_file_format=True)
    block = os.urandom(512 * 512 * 2)
    with out.open("ab") as f:
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * len(block)))
        for _ in range(frames):
            f.write(block)
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def create_order(data: Path, root: Path) -> None:
    """The order the bench images belong to (patient BENCH1, accession BENCHACC, CT), in a new database
    under ``data``, as an ORM^O01 would have created it, by the code of the tree ``root`` (another tree,
    such as ``--baseline``, in a process of its own: its engine must find the schema it migrates to)."""
    if root.resolve() != ROOT.resolve():
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from bench.bench_store import"
                        " create_order; create_order(Path(sys.argv[1]), Path(sys.argv[2]))", str(data), str(root)],
                       cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, check=True)
        return
    from engine.config.models import EngineConfig
    from engine.domain.handlers import OrdersHandler, order_policy
    from engine.store.database import Database
    from tests.domain.factories import apply_records, order, patient

    config = EngineConfig.model_validate({"data_dir": data, "mappings_dir": root / "mappings"})
    db = Database(config.database_url())
    try:
        db.migrate()
        apply_records(db, OrdersHandler(order_policy(config)), [
            patient("BENCH1", patient_name="BENCH^ORDERED"),
            order("BENCHPL1", patient_id="BENCH1", accession_number="BENCHACC", modality="CT"),
        ])  # fmt: skip
    finally:
        db.close()


@contextmanager
def radbridge(tmp: Path, root: Path = ROOT, with_order: bool = False,
              processes: int | None = None) -> Iterator[tuple[int, str, int]]:
    """``radbridge run`` from the source tree ``root`` with only its DICOM listener, on a fresh data
    directory (holding the bench images' order when ``with_order``), with ``dicom.receive_processes``
    set when ``processes`` is not None: (port, AE, pid)."""
    port, config = free_port(), tmp / "rb-config"
    (config / "channels").mkdir(parents=True)
    data = tmp / "rb-data"
    if with_order:
        create_order(data, root)
    workers = "" if processes is None else f"  receive_processes: {processes}\n"
    (config / "engine.yaml").write_text(f"data_dir: {data}\ndicom:\n  port: {port}\n  ae_title: RADBRIDGE\n"
                                        f"{workers}logging:\n  level: WARNING\n")
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "--config", str(config), "run"], cwd=root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, proc=proc)
        yield port, "RADBRIDGE", proc.pid
    finally:
        _stop(proc)


@contextmanager
def storescp(tmp: Path) -> Iterator[tuple[int, str, int]]:
    port, out = free_port(), tmp / "storescp"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "--fork", "-aet", "STORESCP", "-od", str(out), str(port)], env=dcmtk_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, proc=proc)
        yield port, "STORESCP", proc.pid
    finally:
        _stop(proc)


@contextmanager
def orthanc(tmp: Path) -> Iterator[tuple[int, str, int]]:
    port, http, store = free_port(), free_port(), tmp / "orthanc"
    store.mkdir()
    config = {"Name": "PACS", "StorageDirectory": str(store), "IndexDirectory": str(store), "HttpPort": http,
              "DicomPort": port, "DicomAet": "PACS", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, "DicomCheckCalledAet": True}
    (tmp / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(["Orthanc", str(tmp / "orthanc.json")], env=dcmtk_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, proc=proc, timeout=30)
        yield port, "PACS", proc.pid
    finally:
        _stop(proc)


Scp = Callable[[Path], AbstractContextManager[tuple[int, str, int]]]
SCPS: dict[str, Scp] = {"radbridge": radbridge, "storescp": storescp, "orthanc": orthanc}
#: --orders: the radbridge SCPs measured (name -> with the images' order).
ORDERS: dict[str, dict[str, bool]] = {"unscheduled": {"radbridge": False}, "matched": {"radbridge+order": True},
                                      "both": {"radbridge": False, "radbridge+order": True}}


def radbridge_scps(orders: str, baseline: Path | None, processes: list[int] | None = None) -> dict[str, Scp]:
    """The radbridge configurations of ``--orders`` (one per ``processes`` value, suffixed ``/pN``, when
    given), and the same from ``baseline`` (prefixed ``base:``, its own default)."""
    scps: dict[str, Scp] = {}
    for name, with_order in ORDERS[orders].items():
        for count in processes or [None]:
            suffix = "" if count is None else f"/p{count}"
            scps[name + suffix] = functools.partial(radbridge, with_order=with_order, processes=count)
        if baseline is not None:
            scps[f"base:{name}"] = functools.partial(radbridge, root=baseline, with_order=with_order)
    return scps


@dataclass(frozen=True)
class Figure:
    """One measurement: images/s and the SCP's CPU milliseconds per image."""

    rate: float
    cpu_ms: float


def measure(scp: Scp, paths: list[Path], warmup: list[Path], senders: int, tmp: Path) -> Figure:
    """``paths`` sent by ``senders`` storescu processes to a fresh SCP, after ``warmup`` on one association."""
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    with scp(run_dir) as (port, aec, pid):
        storescu_rate(port, aec, warmup, 1)
        before = cpu_seconds(pid)
        rate = storescu_rate(port, aec, paths, senders)
        cpu_ms = (cpu_seconds(pid) - before) * 1000 / len(paths)
    shutil.rmtree(run_dir, ignore_errors=True)
    return Figure(rate, cpu_ms)


def one_run(scps: dict[str, Scp], names: list[str], paths: list[Path], warmup: list[Path], concurrency: int,
            tmp: Path) -> dict[tuple[str, int], Figure]:
    """Every SCP in ``names`` (in that order), one association then ``concurrency``."""
    figures = {}
    for name in names:
        for senders in (1, concurrency):
            figures[name, senders] = fig = measure(scps[name], paths, warmup, senders, tmp)
            print(f"  {name:15s} {senders} association(s) {fig.rate:7.1f} images/s  CPU {fig.cpu_ms:6.2f} ms/image",
                  flush=True)  # fmt: skip
    return figures


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(runs: list[dict[tuple[str, int], Figure]], ours: list[str], peers: list[str], concurrency: int) -> None:
    """Medians over the runs, the medians of the per-run ratios, and the #13 targets, for each of ``ours``."""
    print(f"\nmedians of {len(runs)} run(s) (min-max in brackets):")
    for name in ours + peers:
        for senders in (1, concurrency):
            figs = [run[name, senders] for run in runs]
            rates = [f.rate for f in figs]
            print(f"  {name:15s} {senders} association(s) {_median(rates):7.1f} images/s "
                  f"[{min(rates):.0f}-{max(rates):.0f}]  CPU {_median([f.cpu_ms for f in figs]):6.2f} ms/image")
    print(f"targets (#13): /orthanc >= 1.0 and /storescp >= 0.5 on one association; {concurrency} associations"
          " >= 1.5x one")
    for name in ours:
        _targets(runs, name, peers, concurrency)


def _ratio(runs: list[dict[tuple[str, int], Figure]], a: tuple[str, int], b: tuple[str, int]) -> str:
    values = [run[a].rate / run[b].rate for run in runs]
    return f"{_median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def _targets(runs: list[dict[tuple[str, int], Figure]], name: str, peers: list[str], concurrency: int) -> None:
    """One radbridge configuration against each peer (median of the per-run ratios, and their spread)."""
    for peer in peers:
        for senders in (1, concurrency):
            print(f"  {name}/{peer} {senders} association(s): {_ratio(runs, (name, senders), (peer, senders))}")
    print(f"  {name} {concurrency} associations / 1: {_ratio(runs, (name, concurrency), (name, 1))}")


def one_association_each(scps: dict[str, Scp], names: list[str], paths: list[Path], warmup: list[Path],
                         runs: int, tmp: Path) -> None:
    """images/s when every image comes on its own association (a storescu process per image, one after the
    other), as modalities that associate for each image send: association set-up and release dominate."""
    print(f"\none association per image ({len(paths)} images, a storescu process each, one after the other):")
    rates: dict[str, list[float]] = {name: [] for name in names}
    for n in range(runs):
        for name in names[n % len(names):] + names[:n % len(names)]:
            run_dir = Path(tempfile.mkdtemp(dir=tmp))
            with scps[name](run_dir) as (port, aec, _pid):
                storescu_rate(port, aec, warmup, 1)
                start = time.perf_counter()
                for path in paths:
                    storescu_rate(port, aec, [path], 1)
                rates[name].append(len(paths) / (time.perf_counter() - start))
            shutil.rmtree(run_dir, ignore_errors=True)
    for name in names:
        print(f"  {name:15s} {_median(rates[name]):7.1f} images/s [{min(rates[name]):.0f}-{max(rates[name]):.0f}]")
    for name in (n for n in names if n.startswith(("radbridge", "base:"))):
        for peer in (p for p in names if not p.startswith(("radbridge", "base:"))):
            ratios = [a / b for a, b in zip(rates[name], rates[peer], strict=True)]
            print(f"  {name}/{peer}: {_median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]")


def big_instance(megabytes: int, tmp: Path, warmup: list[Path]) -> None:
    """Peak vs idle resident memory of radbridge while it receives one ``megabytes`` MB instance."""
    path = write_big_instance(megabytes, tmp / "big.dcm")
    size_mb = path.stat().st_size / 2**20
    with radbridge(Path(tempfile.mkdtemp(dir=tmp))) as (port, aec, pid):
        storescu_rate(port, aec, warmup, 1)
        idle = memory_kb(pid, "VmRSS")
        start = time.perf_counter()
        storescu_rate(port, aec, [path], 1)
        elapsed = time.perf_counter() - start
        peak = memory_kb(pid, "VmHWM")
    print(f"\none {size_mb:.0f} MB multi-frame instance into radbridge: {elapsed:.1f} s "
          f"({size_mb / elapsed:.0f} MB/s); RSS idle {idle / 1024:.0f} MB, peak {peak / 1024:.0f} MB "
          f"(+{(peak - idle) / 1024:.0f} MB)")
    path.unlink()


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        paths = write_instances(args.count, tmp / "images")
        warmup = write_instances(5, tmp / "warmup")
        peer_scps = {name: scp for name, scp in SCPS.items() if name != "radbridge"}
        scps = {**radbridge_scps(args.orders, args.baseline, args.receive_processes), **peer_scps}
        ours = [name for name in scps if name.startswith(("radbridge", "base:"))]
        peers = ["storescp"] + ([] if args.no_orthanc else ["orthanc"])
        names = ours + peers
        print(f"{args.count} CT instances of {paths[0].stat().st_size // 1024} KB each, storescu (TCP_NODELAY=1), "
              f"{args.runs} run(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}:")
        runs = []
        for n in range(args.runs):
            order = names[n % len(names):] + names[:n % len(names)]  # interleaved: each SCP goes first in turn
            print(f"run {n + 1}:")
            runs.append(one_run(scps, order, paths, warmup, args.concurrency, tmp))
        summary(runs, ours, peers, args.concurrency)
        if args.image_associations:
            one_association_each(scps, names, paths[:args.image_associations], warmup, args.runs, tmp)
        if args.big_mb:
            big_instance(args.big_mb, tmp, write_instances(2, tmp / "warmup-big"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big-mb", type=int, default=1024, help="size of the multi-frame instance; 0 skips it")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--image-associations", type=int, default=0,
                        help="then send this many images on an association each (0 skips it)")
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--orders", choices=sorted(ORDERS), default="unscheduled",
                        help="images no order matches, images of an order (matched and coerced), or both")
    parser.add_argument("--baseline", type=Path, help="a source tree to run as well (A/B in the same run)")
    parser.add_argument("--receive-processes", type=lambda v: [int(n) for n in v.split(",")],
                        help="dicom.receive_processes of this tree's radbridge, e.g. 0,2 (each one an SCP of its"
                        " own); default: the shipped default")
    args = parser.parse_args()
    if os.environ.get(_IN_NAMESPACE) != "1" and shutil.which("unshare"):
        env = {**os.environ, _IN_NAMESPACE: "1"}
        inner = f"ip link set lo up && exec {sys.executable} -m bench.bench_store {' '.join(sys.argv[1:])}"
        sys.exit(subprocess.call(["unshare", "--net", "sh", "-c", inner], cwd=ROOT, env=env))
    run(args)


if __name__ == "__main__":
    main()
