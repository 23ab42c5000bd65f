"""Two engine processes on one PostgreSQL behind a real HAProxy (ARCHITECTURE "Scale").

The deployment of docs/deployment.md, on loopback: two ``radbridge run``
processes with their own data directories and ports share one database and one
channel configuration (orders forwarded over MLLP to a recording peer, in order
per patient); HAProxy in ``mode tcp`` balances their MLLP and DICOM listeners.
python-hl7's MLLP client sends orders through HAProxy, opening new connections
as it goes so that both processes receive some, and resends on a connection
error as a real sender does; DCMTK ``findscu`` reads the worklist through
HAProxy and from each process directly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep
from sqlalchemy import Engine, create_engine, func, select

from engine.domain.tables import orders, patients, procedure_steps
from engine.store.schema import messages, outbox
from tests.conftest import ROOT, PostgresServer, free_port, need
from tests.integration.conftest import Ack, Sender
from tests.integration.mllp_peer import MLLPPeer
from tests.integration.scaleout import HAProxy, Node, cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PATIENTS_PER_SENDER = 3
SENDERS = 4
#: Orders per sender; each sender owns its patients and sends their orders one after the other.
ORDERS_PER_SENDER = 40
#: A sender opens a new connection after this many messages (HAProxy balances connections).
MESSAGES_PER_CONNECTION = 4
#: Outbox lease of the kill test: as short as the destination's 1 s timeout allows.
LEASE_SECONDS = 12.0


def order(control_id: str, patient_id: str, placer: str, start: str) -> bytes:
    """An ORM^O01 new order without an accession number (the engine's sequence gives one)."""
    obr = f"OBR|1|{placer}||CTHEAD^CT head^L" + "|" * 14 + f"|RP{placer[-10:]}|SPS{placer[-10:]}" + "|" * 4 + "CT"
    segments = [
        f"MSH|^~\\&|RIS|NORTH|RADBRIDGE|NORTH|{start}||ORM^O01|{control_id}|P|2.5.1",
        f"PID|1||{patient_id}^^^NORTH^MR||DOE^{patient_id}||19800202|F",
        "PV1|1|O|RAD",
        f"ORC|NW|{placer}|||SC||^^^{start}^^R",
        obr,
    ]
    return ("\r".join(segments) + "\r").encode("ascii")


def workload(tag: str) -> list[list[tuple[str, str, bytes]]]:
    """Per sender: (control id, patient id, message), patients interleaved."""
    start = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    plans = []
    for s in range(SENDERS):
        patient_ids = [f"{tag}{s}P{p}" for p in range(PATIENTS_PER_SENDER)]
        plan = []
        for n in range(ORDERS_PER_SENDER):
            cid, pid = f"{tag}{s}-{n:03d}", patient_ids[n % PATIENTS_PER_SENDER]
            plan.append((cid, pid, order(cid, pid, f"PL{tag}{s}{n:03d}", start)))
        plans.append(plan)
    return plans


class Stream:
    """Senders through the balancer: what got AA, and which process answered (ACK MSH-10 prefix)."""

    def __init__(self, port: int, on_accept: Callable[[], None] = lambda: None) -> None:
        self.port = port
        self.on_accept = on_accept
        self.accepted: dict[str, str] = {}  # control id -> answering process (its ACK id prefix)
        self.not_aa: list[tuple[str, str]] = []
        self.reconnects = 0

    async def _send(self, sender: Sender, payload: bytes, deadline: float) -> Ack:
        """Send until answered; on a connection error reconnect (through HAProxy) and resend."""
        while True:
            try:
                return await sender.send(payload)
            except (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError):
                await sender.close()
                self.reconnects += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _run_one(self, plan: list[tuple[str, str, bytes]], deadline: float) -> None:
        sender = Sender(self.port, timeout=10)
        try:
            for n, (cid, _pid, payload) in enumerate(plan):
                if n % MESSAGES_PER_CONNECTION == 0:
                    await sender.close()
                ack = await self._send(sender, payload, deadline)
                if ack.code != "AA":
                    self.not_aa.append((cid, ack.code))
                    continue
                self.accepted[cid] = ack.field("MSH", 10)[:8]
                self.on_accept()
        finally:
            await sender.close()

    def run(self, plans: list[list[tuple[str, str, bytes]]], timeout: float = 90.0) -> None:
        async def all_senders() -> None:
            deadline = time.monotonic() + timeout
            await asyncio.gather(*(self._run_one(plan, deadline) for plan in plans))

        asyncio.run(all_senders())


class SlowPeer(MLLPPeer):
    """The recording MLLP peer, holding each ACK back ``ack_delay`` seconds (a busy receiver)."""

    ack_delay = 0.0

    async def _reply(self, payload: bytes, writer: asyncio.StreamWriter) -> None:
        if self.ack_delay:
            await asyncio.sleep(self.ack_delay)
        await super()._reply(payload, writer)


@pytest.fixture
def peer() -> Iterator[SlowPeer]:
    receiver = SlowPeer(free_port())
    receiver.up()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def shared_db(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[tuple[str, Engine]]:
    need(HAProxy.available(), "haproxy not installed (apt-get install haproxy)")
    need(shutil.which("findscu") is not None, "DCMTK findscu not installed")
    url = postgres.create_database(f"scaleout_{request.node.name[5:20].lower()}_{os.getpid()}")
    engine = create_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()


def engine_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def stored_counts(db: Engine) -> dict[str, int]:
    """Control id -> number of message rows, whatever their status; every row must be PROCESSED."""
    query = (select(messages.c.control_id, messages.c.status, func.count())
             .group_by(messages.c.control_id, messages.c.status))
    with db.connect() as conn:
        rows = conn.execute(query).all()
    assert {status for _, status, _ in rows} <= {"PROCESSED"}, rows
    return {cid: n for cid, _, n in rows}


def accession_numbers(db: Engine) -> list[str]:
    with db.connect() as conn:
        return [a for (a,) in conn.execute(select(orders.c.accession_number))]


def wait_all_sent(db: Engine, timeout: float) -> None:
    """Wait until no outbox row is QUEUED any more; fail if any ended in ERROR."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.connect() as conn:
            statuses = dict(conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status)).all())
        assert "ERROR" not in statuses, statuses
        if statuses and set(statuses) == {"SENT"}:
            return
        time.sleep(0.2)
    raise TimeoutError(f"outbox not delivered after {timeout}s: {statuses}")


def per_patient(peer: MLLPPeer) -> dict[str, list[str]]:
    """The control ids the peer received, per patient, in arrival order."""
    got: dict[str, list[str]] = defaultdict(list)
    for received in peer.messages():
        got[received.patient_id].append(received.control_id)
    return got


def sent_order(plans: list[list[tuple[str, str, bytes]]]) -> dict[str, list[str]]:
    want: dict[str, list[str]] = defaultdict(list)
    for plan in plans:
        for cid, pid, _ in plan:
            want[pid].append(cid)
    return want


def worklist(port: int, out: Path) -> set[tuple[str, str, str]]:
    """(AccessionNumber, PatientID, SPS ID) of every entry, read with DCMTK findscu."""
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", "-W", "-aet", "CT1", "-aec", "RADBRIDGE", "-X", "-od", str(out), "127.0.0.1", str(port),
            "-k", "AccessionNumber=", "-k", "PatientID=", "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
            "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID="]
    subprocess.run(args, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True,
                   timeout=60)
    found = set()
    for path in out.glob("rsp*.dcm"):
        ds = dcmread(path)
        found.add((ds.AccessionNumber, ds.PatientID, ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID))
    return found


def test_two_processes_behind_haproxy_share_orders_outbox_and_worklist(
        tmp_path: Path, shared_db: tuple[str, Engine], peer: SlowPeer) -> None:
    url, db = shared_db
    plans = workload("N")
    total = SENDERS * ORDERS_PER_SENDER
    with cluster(tmp_path, engine_env(), url, peer.port) as (nodes, balancer):
        stream = Stream(balancer.ports["mllp"])
        stream.run(plans)
        assert stream.not_aa == []
        assert len(stream.accepted) == total
        assert len(set(stream.accepted.values())) == 2, "both processes must have answered some orders"
        stats = balancer.stats()
        assert all(int(stats[("mllp", f"rb{i}")]["stot"]) > 0 for i in (1, 2))

        counts = stored_counts(db)
        assert counts == {cid: 1 for cid in stream.accepted}
        accessions = accession_numbers(db)
        assert len(accessions) == total and all(accessions)
        assert len(set(accessions)) == total, "accession numbers from the shared sequence must be unique"

        wait_all_sent(db, timeout=60)
        peer.wait_for(total)
        time.sleep(0.5)  # anything extra (a second delivery) would arrive now
        assert sorted(r.control_id for r in peer.messages()) == sorted(stream.accepted)
        assert per_patient(peer) == sent_order(plans)

        through_balancer = worklist(balancer.ports["dicom"], tmp_path / "wl-haproxy")
        direct = [worklist(n.dicom_port, tmp_path / f"wl-{i}") for i, n in enumerate(nodes)]
        with db.connect() as conn:
            steps = conn.execute(select(func.count()).select_from(procedure_steps)).scalar()
        assert steps == total
        assert len(through_balancer) == total
        assert {a for a, _, _ in through_balancer} == set(accessions)
        assert direct == [through_balancer, through_balancer]


class Killer:
    """SIGKILLs one node from its own thread once ``after`` orders got AA (progress, not a clock)."""

    def __init__(self, node: Node, after: int, then: Callable[[], None]) -> None:
        self.node, self.after, self.then = node, after, then
        self.accepted = 0
        self.killed_at = 0.0
        self._lock = threading.Lock()
        self._reached = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def count(self) -> None:
        with self._lock:
            self.accepted += 1
            if self.accepted >= self.after:
                self._reached.set()

    def _run(self) -> None:
        self._reached.wait(60)
        self.node.engine.kill()
        self.killed_at = time.monotonic()
        self.then()

    def join(self) -> None:
        self._reached.set()
        self._thread.join(30)


def leases(db: Engine) -> dict[int, datetime]:
    """QUEUED rows whose lease has not run out: row id -> leased until."""
    now = datetime.now(UTC)
    with db.connect() as conn:
        rows = conn.execute(select(outbox.c.id, outbox.c.claimed_until)
                            .where(outbox.c.status == "QUEUED", outbox.c.claimed_until.is_not(None)))
        return {i: until for i, until in rows if until > now}


def collapse_repeats(ids: list[str]) -> list[str]:
    return [cid for n, cid in enumerate(ids) if n == 0 or ids[n - 1] != cid]


def test_killing_one_process_mid_stream_loses_nothing_and_the_other_delivers_its_claims(
        tmp_path: Path, shared_db: tuple[str, Engine], peer: SlowPeer) -> None:
    url, db = shared_db
    plans = workload("K")
    total = SENDERS * ORDERS_PER_SENDER
    # A slow receiver until the kill: both processes' outbox workers are mid-batch, holding leases.
    peer.ack_delay = 0.5

    def after_kill() -> None:
        peer.ack_delay = 0.0

    with cluster(tmp_path, engine_env(), url, peer.port, lease_seconds=LEASE_SECONDS) as (nodes, balancer):
        victim, survivor = nodes
        killer = Killer(victim, after=total // 4, then=after_kill)
        stream = Stream(balancer.ports["mllp"], on_accept=killer.count)
        try:
            stream.run(plans)
        finally:
            killer.join()
        assert victim.engine.proc is not None and victim.engine.proc.returncode == -9
        assert stream.not_aa == []
        assert len(stream.accepted) == total, "the surviving process takes every order through HAProxy"
        assert stream.reconnects > 0, "the kill broke connections the senders were using"

        # Leases the dead process left: still held, unchanged, once the survivor finished its own.
        time.sleep(max(0.0, killer.killed_at + 3 - time.monotonic()))
        first = leases(db)
        time.sleep(2)
        orphaned = {i: until for i, until in leases(db).items() if first.get(i) == until}
        assert orphaned, "the killed process held no lease: the scenario did not happen"

        counts = stored_counts(db)
        assert counts == {cid: 1 for cid in stream.accepted}, "every AA'd order stored exactly once"
        accessions = accession_numbers(db)
        assert len(accessions) == total and len(set(accessions)) == total

        wait_all_sent(db, timeout=LEASE_SECONDS + 30)
        with db.connect() as conn:
            statuses = set(conn.execute(select(outbox.c.status).where(outbox.c.id.in_(list(orphaned)))).scalars())
        assert statuses == {"SENT"}, "the survivor delivered what the dead process had claimed"
        time.sleep(0.5)
        received = [r.control_id for r in peer.messages()]
        assert set(received) == set(stream.accepted)
        # At-least-once: the one send the dead process had under way may arrive again, nothing else.
        assert len(received) - len(set(received)) <= 1
        assert {pid: collapse_repeats(ids) for pid, ids in per_patient(peer).items()} == sent_order(plans)
        assert survivor.engine.proc is not None and survivor.engine.proc.poll() is None
        # Modalities keep their worklist through the balancer: HAProxy sends them to the survivor.
        balancer.wait_until("dicom", "rb1", "DOWN")
        entries = worklist(balancer.ports["dicom"], tmp_path / "wl-after-kill")
        assert {a for a, _, _ in entries} == set(accessions)


@pytest.fixture(scope="module")
def plain_cluster(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[list[Node], HAProxy, Engine]]:
    """Two processes behind HAProxy without an outbound destination, shared by the tests below."""
    need(HAProxy.available(), "haproxy not installed (apt-get install haproxy)")
    url = postgres.create_database(f"scaleout_plain_{os.getpid()}")
    db = create_engine(url)
    try:
        with cluster(tmp_path_factory.mktemp("plain"), engine_env(), url, None) as (nodes, balancer):
            yield nodes, balancer, db
    finally:
        db.dispose()


def test_the_same_new_patient_arriving_on_both_processes_at_once_is_accepted_by_both(
        plain_cluster: tuple[list[Node], HAProxy, Engine]) -> None:
    """An order per process for one new patient, sent to both at the same moment (say ADT on one
    connection, the order on another): both AA, one patient, both orders."""
    nodes, _balancer, db = plain_cluster
    start = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    pairs = 20

    async def race(ports: list[int]) -> list[str]:
        codes = []
        for n in range(pairs):
            senders = [Sender(port) for port in ports]
            try:
                acks = await asyncio.gather(*(
                    s.send(order(f"R{n}-{k}", f"RACE{n}", f"PLR{n}x{k}", start)) for k, s in enumerate(senders)))
            finally:
                for s in senders:
                    await s.close()
            codes += [a.code for a in acks]
        return codes

    codes = asyncio.run(race([n.mllp_port for n in nodes]))
    assert codes == ["AA"] * 2 * pairs
    race_patients = select(patients.c.id).where(patients.c.patient_id.like("RACE%"))
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(race_patients.subquery())).scalar() == pairs
        assert conn.execute(select(func.count()).select_from(orders)
                            .where(orders.c.patient_pk.in_(race_patients))).scalar() == 2 * pairs


def mpps(port: int, uid: str, status: str, step: dict[str, str] | None = None) -> int:
    """N-CREATE (with the scheduled step's references) or N-SET through pynetdicom; the DIMSE status."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.PerformedProcedureStepStatus = status
        if step is None:
            answer, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
            return int(answer.Status)
        ref = Dataset()
        ref.AccessionNumber, ref.ScheduledProcedureStepID = step["accession"], step["sps_id"]
        ref.StudyInstanceUID = step["study_uid"]
        ds.ScheduledStepAttributesSequence = [ref]
        ds.PatientID, ds.Modality, ds.PerformedStationAETitle = step["patient_id"], "CT", "CT1"
        ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = step["date"], "094500"
        ds.PerformedProcedureStepID = "PPS-" + step["sps_id"]  # Type 1 (PS3.4 F.7.2-1)
        answer, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        return int(answer.Status)
    finally:
        assoc.release()


def test_mpps_begun_on_one_process_is_completed_on_the_other(
        plain_cluster: tuple[list[Node], HAProxy, Engine], tmp_path: Path) -> None:
    nodes, balancer, db = plain_cluster
    today = datetime.now(UTC).strftime("%Y%m%d")
    payload = order("MPPS1", "MPPSPAT", "PLMPPS1", today + "093000")
    assert asyncio.run(Sender(balancer.ports["mllp"]).send(payload)).code == "AA"
    with db.connect() as conn:
        row = conn.execute(select(orders.c.accession_number, orders.c.study_instance_uid, procedure_steps.c.sps_id)
                           .join(procedure_steps, procedure_steps.c.order_pk == orders.c.id)
                           .where(orders.c.placer_order_number == "PLMPPS1")).one()
    step = {"accession": row.accession_number, "study_uid": row.study_instance_uid, "sps_id": row.sps_id,
            "patient_id": "MPPSPAT", "date": today}
    uid = "1.2.826.0.1.3680043.10.999.4242"
    first, second = nodes[0].dicom_port, nodes[1].dicom_port
    assert row.accession_number in {a for a, _, _ in worklist(second, tmp_path / "before")}
    assert mpps(first, uid, "IN PROGRESS", step) == 0
    assert mpps(second, uid, "COMPLETED") == 0
    assert mpps(first, uid, "COMPLETED") == 0x0110  # the first process sees the second's final state
    entries = worklist(balancer.ports["dicom"], tmp_path / "after")
    assert row.accession_number not in {a for a, _, _ in entries}  # performed steps leave the worklist


def test_the_haproxy_configuration_in_docs_is_valid(tmp_path: Path) -> None:
    need(HAProxy.available(), "haproxy not installed (apt-get install haproxy)")
    text = (ROOT / "docs" / "deployment.md").read_text()
    block = text.split("```haproxy\n", 1)[1].split("```", 1)[0]
    (tmp_path / "haproxy.cfg").write_text(block)
    binary = HAProxy.binary()
    assert binary is not None
    result = subprocess.run([binary, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mode tcp" in block and "check" in block
