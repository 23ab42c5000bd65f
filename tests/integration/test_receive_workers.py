"""DICOM associations served by receive worker processes (``dicom.receive_processes``).

``radbridge run`` with two workers; the evidence is the operating system's: which process holds
the server side of each TCP connection (``/proc/net/tcp`` inode -> ``/proc/<pid>/fd``), which
children the engine has, and the rows and files of the data directory. Senders are pynetdicom
(associations held open, to look at them) and DCMTK ``storescu``.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.conftest import EngineProcess, PostgresServer, free_port, need
from tests.dicom.conftest import DCMTK
from tests.dicom.store_peer import storescu
from tests.integration.conftest import sqlite_rows, write_engine_yaml
from tests.integration.forward_peer import all_sent, forwarding_yaml, storescp, wait_until
from tests.pki import make_pki

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"


# --- what the operating system says -------------------------------------------------------------


def children(pid: int) -> set[int]:
    """The live (not zombie) processes whose parent is ``pid``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def _socket_inode(server_port: int, client_port: int) -> str:
    """The inode of the server side of the loopback TCP connection from ``client_port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local, remote = cols[1], cols[2]
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                return cols[9]
    raise AssertionError(f"no connection from port {client_port} to {server_port}")


def serving_pid(server_port: int, assoc: Any, candidates: set[int]) -> int:
    """Which of ``candidates`` holds the server side of ``assoc``'s connection."""
    client_port = assoc.dul.socket.socket.getsockname()[1]
    wanted = f"socket:[{_socket_inode(server_port, client_port)}]"
    holders = set()
    for pid in candidates:
        with_fds = Path(f"/proc/{pid}/fd")
        for fd in with_fds.iterdir():
            try:
                if os.readlink(fd) == wanted:
                    holders.add(pid)
            except OSError:
                continue
    assert len(holders) == 1, f"connection held by {holders} of {candidates}"
    return holders.pop()


# --- the engine and its senders -----------------------------------------------------------------


def _start(engine: EngineProcess, extra: str = "", processes: int = 2) -> int:
    port = free_port()
    write_engine_yaml(engine, f"dicom:\n  port: {port}\n  ae_title: RADBRIDGE\n  receive_processes: {processes}\n"
                              + extra)
    engine.start(wait_port=port)
    assert engine.proc is not None
    wait_until(lambda: len(children(engine.proc.pid)) == processes, what="the receive workers")  # type: ignore[union-attr]
    return port


def _instances(corpus: Path, count: int) -> list[Dataset]:
    base = dcmread(corpus / "dicom" / "single" / "CT_small.dcm")
    study, series = generate_uid(), generate_uid()
    out = []
    for n in range(count):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, n + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def _associate(port: int, aet: str = "CT1") -> Any:
    ae = AE(ae_title=aet)
    ae.add_requested_context(CT, EXPLICIT)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    return ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")


@contextmanager
def _held(port: int, count: int) -> Iterator[list[Any]]:
    """``count`` associations held open. A slot comes back when a worker has seen its connection close
    (``engine.start``'s port probe, an earlier test step), which can lag under load: an attempt the
    engine refuses is retried for a while, so a refusal later in a test is the limit, not that lag."""
    assocs: list[Any] = []
    try:
        for _ in range(count):
            def one() -> bool:
                assocs.append(_associate(port))
                if assocs[-1].is_established:
                    return True
                assocs.pop()
                return False
            wait_until(one, timeout=20, what="an association slot")
    except BaseException:
        for assoc in assocs:
            assoc.release()
        raise
    try:
        yield assocs
    finally:
        for assoc in assocs:
            if assoc.is_established:
                assoc.release()


def _indexed(engine: EngineProcess) -> Counter[str]:
    rows = sqlite_rows(engine.data_dir / "radbridge.db", "SELECT sop_instance_uid, path FROM instances")
    for _, path in rows:
        assert (engine.data_dir / "archive" / path).is_file()
    return Counter(uid for uid, _ in rows)


def _stored(status: Any) -> bool:
    return "Status" in status and int(status.Status) == 0x0000


# --- the tests ----------------------------------------------------------------------------------


def test_concurrent_associations_are_served_by_different_worker_processes(
        engine_process: EngineProcess, corpus: Path) -> None:
    port = _start(engine_process)
    assert engine_process.proc is not None
    workers = children(engine_process.proc.pid)
    datasets = _instances(corpus, 2)
    with _held(port, 2) as (first, second):
        assert first.is_established and second.is_established
        pids = {serving_pid(port, first, workers), serving_pid(port, second, workers)}
        assert pids == workers  # one association in each worker, none in the engine process
        assert _stored(first.send_c_store(datasets[0])) and _stored(second.send_c_store(datasets[1]))
        assert int(first.send_c_echo().Status) == 0
    assert _indexed(engine_process) == Counter(str(ds.SOPInstanceUID) for ds in datasets)


def test_four_storescu_streams_at_once_are_each_indexed_exactly_once(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    need(DCMTK, "DCMTK (storescu) not installed")
    port = _start(engine_process)
    streams = []
    for s in range(4):
        folder = tmp_path / f"s{s}"
        folder.mkdir()
        for n, ds in enumerate(_instances(corpus, 15)):
            ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
        streams.append(sorted(folder.glob("*.dcm")))
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda f=files: results.append(storescu(port, f))) for files in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr[-500:] for r in results]
    sent = Counter(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for files in streams for p in files)
    assert _indexed(engine_process) == sent


def test_kill_9_of_a_worker_mid_stream_loses_no_success_and_the_engine_keeps_serving(
        engine_process: EngineProcess, corpus: Path) -> None:
    port = _start(engine_process)
    assert engine_process.proc is not None
    workers = children(engine_process.proc.pid)
    streams = [_instances(corpus, 60) for _ in range(4)]
    stored: list[list[str]] = [[] for _ in streams]
    assocs = [_associate(port) for _ in streams]
    victim = serving_pid(port, assocs[0], workers)
    started = threading.Barrier(len(streams) + 1)

    def send(i: int) -> None:
        started.wait()
        for ds in streams[i]:
            if not assocs[i].is_established:
                return
            if _stored(assocs[i].send_c_store(ds)):
                stored[i].append(str(ds.SOPInstanceUID))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    started.wait()
    wait_until(lambda: len(stored[0]) >= 10, what="ten stores on the victim's association")
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(timeout=120)
    for assoc in assocs:
        if assoc.is_established:
            assoc.release()
    assert len(stored[0]) < len(streams[0])  # its association was cut, not finished
    assert sum(len(s) == len(streams[0]) for s in stored) >= 1  # the other worker's went on
    indexed = _indexed(engine_process)
    for uid in (u for s in stored for u in s):
        assert indexed[uid] == 1  # every success archived and indexed, once
    assert all(count == 1 for count in indexed.values())
    # A new worker replaces the dead one, and the engine serves on.
    wait_until(lambda: len(children(engine_process.proc.pid)) == 2  # type: ignore[union-attr]
               and victim not in children(engine_process.proc.pid), what="a new receive worker")  # type: ignore[union-attr]
    (extra,) = _instances(corpus, 1)
    with _held(port, 1) as (assoc,):
        assert _stored(assoc.send_c_store(extra))
    assert _indexed(engine_process)[str(extra.SOPInstanceUID)] == 1
    assert "receive worker" in engine_process.log() and "ended" in engine_process.log()


def test_the_per_host_limit_holds_across_worker_processes_and_a_dead_worker_frees_its_slots(
        engine_process: EngineProcess) -> None:
    port = _start(engine_process, "  max_associations_per_host: 2\n")
    assert engine_process.proc is not None
    workers = children(engine_process.proc.pid)
    with _held(port, 2) as held:
        assert all(a.is_established for a in held)
        assert {serving_pid(port, a, workers) for a in held} == workers  # the two slots in two processes
        third = _associate(port)
        assert not third.is_established  # refused: the host holds its two connections
        victim = serving_pid(port, held[0], workers)
        os.kill(victim, signal.SIGKILL)
        # The dead worker's connection gives its slot back: one more fits, not two.
        wait_until(lambda: not held[0].is_established, what="the victim's association to end")
        wait_until(lambda: len(children(engine_process.proc.pid) - {victim}) == 2,  # type: ignore[union-attr]
                   what="a new receive worker")
        again: list[Any] = []

        def one_more_fits() -> bool:  # the slot comes back when the engine has seen the worker end
            again.append(_associate(port))
            return bool(again[-1].is_established)

        wait_until(one_more_fits, timeout=10, what="the dead worker's slot")
        over = _associate(port)
        assert not over.is_established
        again[-1].release()


def test_over_max_associations_in_all_is_rejected_whichever_worker_serves_it(
        engine_process: EngineProcess) -> None:
    port = _start(engine_process, "  max_associations: 2\n")
    with _held(port, 2) as held:
        assert all(a.is_established for a in held)
        third = _associate(port)
        assert third.is_rejected  # A-ASSOCIATE-RJ (local limit exceeded), as with one process
        assert (third.acceptor.primitive.result_source, third.acceptor.primitive.diagnostic) == (3, 2)
    wait_until(lambda: _associate_and_release(port), what="a free association slot")


def _associate_and_release(port: int) -> bool:
    assoc = _associate(port)
    ok = bool(assoc.is_established)
    if ok:
        assoc.release()
    return ok


def test_a_stored_image_is_forwarded_without_waiting_for_the_outbox_poll(
        engine_process: EngineProcess, corpus: Path, tmp_path: Path) -> None:
    need(DCMTK, "DCMTK (storescp) not installed")
    with storescp(tmp_path) as peer:
        port = free_port()
        yaml = forwarding_yaml(port, peer.port).replace("poll_interval_seconds: 0.2", "poll_interval_seconds: 60")
        write_engine_yaml(engine_process, yaml.replace("  ae_title: RADBRIDGE\n",
                                                       "  ae_title: RADBRIDGE\n  receive_processes: 2\n"))
        engine_process.start(wait_port=port)
        time.sleep(2)  # past the outbox's first look at start
        sent = storescu(port, [corpus / "dicom" / "single" / "CT_small.dcm"])
        assert sent.returncode == 0, sent.stderr
        wait_until(all_sent(engine_process, 1), timeout=10, what="the forward (woken by the worker's commit)")


def test_stopping_the_engine_stops_every_worker(engine_process: EngineProcess) -> None:
    port = _start(engine_process)
    assert engine_process.proc is not None
    workers = children(engine_process.proc.pid)
    with _held(port, 2) as held:
        assert all(a.is_established for a in held)
        engine_process.proc.send_signal(signal.SIGTERM)
        assert engine_process.proc.wait(timeout=30) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_a_sigterm_while_the_engine_starts_stops_it_cleanly(engine_process: EngineProcess) -> None:
    port = free_port()
    write_engine_yaml(engine_process, f"dicom:\n  port: {port}\n  ae_title: RADBRIDGE\n  receive_processes: 2\n")
    engine_process.start(wait_port=port)  # the DICOM listener is up before the rest of the engine
    assert engine_process.proc is not None
    engine_process.proc.send_signal(signal.SIGTERM)
    assert engine_process.proc.wait(timeout=30) == 0  # not killed by the signal's default action
    log = (engine_process.data_dir / "engine.log").read_text()
    assert "radbridge stopped" in log


def test_workers_of_a_killed_engine_stop_on_their_own(engine_process: EngineProcess) -> None:
    _start(engine_process)
    assert engine_process.proc is not None
    workers = children(engine_process.proc.pid)
    engine_process.kill()
    wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=15, what="the orphaned workers to stop")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_mutual_tls_is_negotiated_in_the_worker_process(engine_process: EngineProcess, corpus: Path,
                                                        tmp_path: Path) -> None:
    need(DCMTK, "DCMTK (storescu) not installed")
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    tls = (f"  tls:\n    cert_file: {pki / 'server.pem'}\n    key_file: {pki / 'server.key'}\n"
           f"    ca_file: {pki / 'ca.pem'}\n    require_client_cert: true\n")
    port = _start(engine_process, tls)
    src = corpus / "dicom" / "single" / "CT_small.dcm"
    anonymous = storescu(port, [src], "+tla", "+cf", str(pki / "ca.pem"), "-to", "10")
    assert anonymous.returncode != 0 and not _indexed(engine_process)
    with_cert = storescu(port, [src], "+tls", str(pki / "client.key"), str(pki / "client.pem"),
                         "+cf", str(pki / "ca.pem"))
    assert with_cert.returncode == 0, with_cert.stderr[-2000:]
    assert _indexed(engine_process) == Counter([str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)])


def test_on_postgresql_the_first_images_of_new_studies_on_both_workers_at_once_all_succeed(
        engine_process: EngineProcess, corpus: Path, postgres: PostgresServer) -> None:
    url = postgres.create_database(f"workers{os.getpid()}")
    port = _start(engine_process, f'database: {{url: "{url}"}}\n')
    assert engine_process.proc is not None
    studies = [_instances(corpus, 4) for _ in range(8)]  # each study's 4 images go out at the same instant
    assocs = [_associate(port) for _ in range(4)]
    assert len({serving_pid(port, a, children(engine_process.proc.pid)) for a in assocs}) == 2
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def send(i: int) -> None:
        for study in studies:
            barrier.wait()
            statuses.append(int(assocs[i].send_c_store(study[i]).Status))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for assoc in assocs:
        assoc.release()
    assert statuses == [0] * 32  # a lost unique-key race is run again, never 0xA700
