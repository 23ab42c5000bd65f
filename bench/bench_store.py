"""C-STORE benchmark: 512 KB CT instances into radbridge, DCMTK storescp and Orthanc, in one run.

    .venv/bin/python -m bench.bench_store [--count 200] [--concurrency 4] [--no-orthanc]

The whole benchmark re-executes itself in a private network namespace (``unshare --net``,
then ``ip link set lo up``): Orthanc binds every interface and has no bind option, so it
and every SCU run where only this process can reach them. Each SCP gets the same
``--count`` generated CT instances (pydicom, 512 x 512 x 16 bit, explicit VR little
endian) from DCMTK ``storescu`` (TCP_NODELAY=1): once on one association, once split over
``--concurrency`` storescu processes at the same time. Each figure is images/s from the
first storescu's start to the last one's exit (association set-up included).

- radbridge: ``radbridge run`` (a subprocess) with the shipped defaults: SQLite
  ``synchronous=FULL``; every image fsynced and its directory fsynced, then indexed with a
  durable commit, before its success.
- storescp: ``storescp --fork -od DIR`` (writes each file; no fsync).
- Orthanc: the Debian package with a SQLite index (its defaults).

Figures are printed with the ratios radbridge/peer; not a pass/fail gate (PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def radbridge(tmp: Path) -> Iterator[tuple[int, str]]:
    """``radbridge run`` with only its DICOM listener, on a fresh data directory."""
    port, config = free_port(), tmp / "rb-config"
    (config / "channels").mkdir(parents=True)
    data = tmp / "rb-data"
    (config / "engine.yaml").write_text(f"data_dir: {data}\ndicom:\n  port: {port}\n  ae_title: RADBRIDGE\n"
                                        "logging:\n  level: WARNING\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "--config", str(config), "run"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, proc=proc)
        yield port, "RADBRIDGE"
    finally:
        _stop(proc)


@contextmanager
def storescp(tmp: Path) -> Iterator[tuple[int, str]]:
    port, out = free_port(), tmp / "storescp"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "--fork", "-aet", "STORESCP", "-od", str(out), str(port)], env=dcmtk_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, proc=proc)
        yield port, "STORESCP"
    finally:
        _stop(proc)


@contextmanager
def orthanc(tmp: Path) -> Iterator[tuple[int, str]]:
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
        yield port, "PACS"
    finally:
        _stop(proc)


def measure(name: str, scp: Callable[[Path], object], paths: list[Path], concurrency: int, tmp: Path) -> list[float]:
    """[one association, ``concurrency`` associations] images/s, each on a fresh SCP."""
    rates = []
    for senders in (1, concurrency):
        run_dir = tmp / f"{name}-{senders}"
        run_dir.mkdir()
        with scp(run_dir) as (port, aec):  # type: ignore[attr-defined]
            rates.append(storescu_rate(port, aec, paths, senders))
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"  {name:10s} 1 association {rates[0]:7.1f} images/s   {concurrency} associations {rates[1]:7.1f} images/s",
          flush=True)
    return rates


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        paths = write_instances(args.count, tmp / "images")
        print(f"{args.count} CT instances of {paths[0].stat().st_size // 1024} KB each, storescu (TCP_NODELAY=1):")
        results = {"radbridge": measure("radbridge", radbridge, paths, args.concurrency, tmp),
                   "storescp": measure("storescp", storescp, paths, args.concurrency, tmp)}
        if not args.no_orthanc:
            results["orthanc"] = measure("orthanc", orthanc, paths, args.concurrency, tmp)
        ours = results["radbridge"]
        for peer, rates in results.items():
            if peer != "radbridge":
                print(f"  radbridge/{peer}: 1 association {ours[0] / rates[0]:.2f}x, "
                      f"{args.concurrency} associations {ours[1] / rates[1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--no-orthanc", action="store_true")
    args = parser.parse_args()
    if os.environ.get(_IN_NAMESPACE) != "1" and shutil.which("unshare"):
        env = {**os.environ, _IN_NAMESPACE: "1"}
        inner = f"ip link set lo up && exec {sys.executable} -m bench.bench_store {' '.join(sys.argv[1:])}"
        sys.exit(subprocess.call(["unshare", "--net", "sh", "-c", inner], cwd=ROOT, env=env))
    run(args)


if __name__ == "__main__":
    main()
