"""The MLLP listener in process: TLS and mutual TLS, idle timeout, garbage then a valid message."""

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from channels.mllp.client import MLLPClient
from channels.mllp.source import MLLPServer
from engine.channel.persist import Persister
from engine.channel.prepare import Preparer
from engine.channel.runner import ChannelRunner
from engine.config.models import ChannelConfig
from engine.hl7.er7 import Message
from engine.store.database import Database

MSG = b"MSH|^~\\&|RIS|H|RB|R|20261122083000||ADT^A08|C{n}|P|2.5\rPID|1||MRN1^^^H||DOE^JANE\r"


def make_server(tmp_path: Path, **source) -> tuple[MLLPServer, Database]:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.migrate()
    cfg = ChannelConfig.model_validate({"name": "t", "source": {"type": "mllp", "port": 0, **source}})
    runner = ChannelRunner(cfg, Preparer(cfg), Persister(cfg, [], "RB", ""), db)
    return MLLPServer(cfg.source, runner), db


def code(answer: bytes) -> str:
    return Message(answer.decode()).segment("MSA").value(1)


def test_mutual_tls_accepts_a_client_with_a_certificate(tmp_path, pki):
    async def scenario():
        tls = {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key"),
               "ca_file": str(pki / "ca.pem"), "require_client_cert": True}
        server, db = make_server(tmp_path, tls=tls)
        await server.start()
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        client = MLLPClient("127.0.0.1", server.port, 10, ctx, "localhost")
        try:
            assert code(await client.send(MSG.replace(b"{n}", b"1"))) == "AA"
            anonymous = MLLPClient("127.0.0.1", server.port, 10, ssl.create_default_context(cafile=str(pki / "ca.pem")),
                                   "localhost")
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                await anonymous.send(MSG.replace(b"{n}", b"2"))
            await anonymous.close()
        finally:
            await client.close()
            await server.stop()
            db.close()

    asyncio.run(scenario())


def test_garbage_then_valid_message_on_the_same_connection(tmp_path):
    async def scenario():
        server, db = make_server(tmp_path)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"random junk\r\n\x0b\x00\xff\xfenot hl7\x1c\r")
            await writer.drain()
            first = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
            assert code(first.strip(b"\x0b\x1c\r")) == "AR"
            writer.write(b"\x0b" + MSG.replace(b"{n}", b"3") + b"\x1c\r")
            await writer.drain()
            second = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
            assert code(second.strip(b"\x0b\x1c\r")) == "AA"
        finally:
            writer.close()
            await server.stop()
            db.close()

    asyncio.run(scenario())


def test_idle_connections_are_closed(tmp_path):
    async def scenario():
        server, db = make_server(tmp_path, idle_timeout_seconds=0.3)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
            await server.stop()
            db.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_pipelined_answers_stay_in_order_when_the_peer_reads_slowly(tmp_path, monkeypatch, loop_kind):
    """A sender that pipelines and reads late: answers that the socket cannot take at once go
    through the transport's buffer, and every answer arrives once, in order."""
    import socket
    import threading
    import time

    import channels.mllp.source as source

    writes = {"direct": 0, "partial": 0}
    threads: set[str] = set()
    real_write = source._write

    def counting_write(fd: int, data: bytes) -> int:
        sent = real_write(fd, data)
        writes["direct"] += 1
        writes["partial"] += sent < len(data)
        threads.add(threading.current_thread().name)
        return sent

    monkeypatch.setattr(source, "_write", counting_write)
    count = 1500
    answers: list[str] = []

    def client(port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(60)

        def send_all() -> None:
            for n in range(count):
                sock.sendall(b"\x0b" + MSG.replace(b"{n}", f"P{n}".encode()) + b"\x1c\r")

        sender = threading.Thread(target=send_all)
        sender.start()
        time.sleep(1.0)  # let the server's answers back up
        buf = b""
        while len(answers) < count:
            chunk = sock.recv(65536)
            assert chunk, "connection closed early"
            buf += chunk
            while b"\x1c\r" in buf:
                one, buf = buf.split(b"\x1c\r", 1)
                answers.append(Message(one.strip(b"\x0b").decode()).segment("MSA").value(2))
        sender.join()
        sock.close()

    async def scenario():
        server, db = make_server(tmp_path)
        await server.start()
        for sock in server._server.sockets:  # accepted connections inherit a small send buffer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        try:
            await asyncio.get_running_loop().run_in_executor(None, client, server.port)
        finally:
            await server.stop()
            db.close()

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())
    assert answers == [f"CP{n}" for n in range(count)]
    # both paths were taken: straight to the socket, and through the transport's buffer
    assert writes["direct"] > 0 and (writes["partial"] or writes["direct"] < count), writes
    # the writer thread sent answers itself right after their commit (the rest: the loop)
    assert "radbridge-writer" in threads, threads


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_lone_sender_is_committed_in_the_event_loop_without_the_writer_thread(tmp_path, monkeypatch, loop_kind):
    """One message at a time and nothing else queued: the event loop commits it itself and writes its ACK."""
    import threading

    import channels.mllp.source as source

    threads: list[str] = []
    real_write = source._write

    def watching_write(fd: int, data: bytes) -> int:
        threads.append(threading.current_thread().name)
        return real_write(fd, data)

    monkeypatch.setattr(source, "_write", watching_write)

    inline: list[int] = []

    async def scenario() -> list[str]:
        server, db = make_server(tmp_path)
        await server.start()
        try:
            client = MLLPClient("127.0.0.1", server.port, timeout=10)
            try:
                return [code(await client.send(MSG.replace(b"{n}", str(n).encode()))) for n in range(20)]
            finally:
                await client.close()
                inline.append(db.writer.inline_commits)
        finally:
            await server.stop()
            db.close()

    run = pytest.importorskip("uvloop").run if loop_kind == "uvloop" else asyncio.run
    assert run(scenario()) == ["AA"] * 20
    assert inline == [20]
    assert threads == [threading.main_thread().name] * 20


def test_when_other_frames_wait_the_message_is_queued_and_the_writer_thread_answers(tmp_path, monkeypatch):
    """Frames wait elsewhere in the process (so the message may share a commit): it goes to the writer
    thread, which writes its ACK right after the commit; a busy writer is never bypassed."""
    import threading

    import channels.mllp.source as source

    threads: list[str] = []
    real_write = source._write

    def watching_write(fd: int, data: bytes) -> int:
        threads.append(threading.current_thread().name)
        return real_write(fd, data)

    monkeypatch.setattr(source, "_write", watching_write)

    async def scenario() -> tuple[list[str], int]:
        server, db = make_server(tmp_path)
        await server.start()
        try:
            client = MLLPClient("127.0.0.1", server.port, timeout=10)
            try:
                source._LOAD.frames += 3  # as if three frames waited on other connections
                try:
                    answers = [code(await client.send(MSG.replace(b"{n}", f"Q{n}".encode()))) for n in range(5)]
                finally:
                    source._LOAD.frames -= 3
                gate = threading.Event()
                db.writer.submit(lambda conn: gate.wait(10))  # other work holds the writer
                sent = asyncio.ensure_future(client.send(MSG.replace(b"{n}", b"busy")))
                await asyncio.sleep(0.3)
                assert not sent.done()  # alone, but the writer is busy: queued, not committed beside it
                gate.set()
                answers.append(code(await sent))
                return answers, db.writer.inline_commits
            finally:
                await client.close()
        finally:
            await server.stop()
            db.close()

    assert asyncio.run(scenario()) == (["AA"] * 6, 0)
    assert threads[:5] == ["radbridge-writer"] * 5


def test_a_connection_closed_while_its_message_commits_gets_nothing_and_hurts_nothing(tmp_path):
    """The peer resets the connection mid-message: the writer's early answer is dropped, the
    message is still stored, and the listener keeps serving."""
    import socket
    import struct

    from sqlalchemy import func, select

    from engine.store.schema import messages

    async def scenario() -> str:
        server, db = make_server(tmp_path)
        await server.start()
        gate = __import__("threading").Event()
        db.writer.submit(lambda conn: gate.wait(10))  # hold the writer while the peer goes away
        try:
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(b"\x0b" + MSG.replace(b"{n}", b"gone") + b"\x1c\r")
            await asyncio.sleep(0.3)
            sock.close()  # RST
            await asyncio.sleep(0.3)
            gate.set()
            client = MLLPClient("127.0.0.1", server.port, timeout=10)
            try:
                answer = code(await client.send(MSG.replace(b"{n}", b"next")))
            finally:
                await client.close()
            stored = db.read(lambda c: c.execute(select(func.count()).select_from(messages)).scalar_one())
            assert stored == 2
            return answer
        finally:
            await server.stop()
            db.close()

    assert asyncio.run(scenario()) == "AA"


def test_the_engine_lifts_its_open_file_limit_for_the_second_descriptor_per_connection():
    """Each plain-TCP connection holds two descriptors; a low soft limit is raised to the hard one."""
    import subprocess
    import sys

    script = (
        "import resource\n"
        "from engine.runtime import raise_open_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    reported, soft, hard = (int(v) for v in done.stdout.split())
    assert reported == soft and soft > 256
    assert soft == hard or hard == -1  # RLIM_INFINITY is -1


def test_connections_give_back_both_their_descriptors(tmp_path):
    """Open and close many connections: the process does not keep their duplicates."""
    import os
    import socket

    def count() -> int:
        return len(os.listdir("/proc/self/fd"))

    def client(port: int) -> None:  # in a thread: the server shares this test's event loop
        for n in range(50):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"\x0b" + MSG.replace(b"{n}", str(n).encode()) + b"\x1c\r")
                assert b"MSA|AA" in sock.recv(4096)

    async def scenario() -> tuple[int, int]:
        server, db = make_server(tmp_path)
        await server.start()
        try:
            before = count()
            await asyncio.get_running_loop().run_in_executor(None, client, server.port)
            await asyncio.sleep(0.3)  # let the last connection_lost run
            return before, count()
        finally:
            await server.stop()
            db.close()

    before, after = asyncio.run(scenario())
    assert after <= before + 2, (before, after)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **source) -> AsyncIterator[tuple[MLLPServer, Database]]:
    """A started listener and its store, stopped and closed afterwards."""
    server, db = make_server(tmp_path, **source)
    await server.start()
    try:
        yield server, db
    finally:
        await server.stop()
        db.close()


def watch_open(monkeypatch, before: Callable[[bytes], None]) -> None:
    """Call ``before(payload)`` ahead of every ``ChannelRunner.open`` (which may raise to fail it)."""
    from engine.channel.runner import ChannelRunner

    real_open = ChannelRunner.open

    def watched(self, payload: bytes):
        before(payload)
        return real_open(self, payload)

    monkeypatch.setattr(ChannelRunner, "open", watched)


def send_frame(sock, n: str) -> None:
    sock.sendall(b"\x0b" + MSG.replace(b"{n}", n.encode()) + b"\x1c\r")


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_lone_frame_is_answered_without_a_task(tmp_path, monkeypatch, loop_kind):
    """The only frame in the process, with an idle writer: opened, committed and answered in one
    callback; the connection never starts a task. Stored exactly as the task path stores it."""
    from sqlalchemy import select

    import channels.mllp.source as source
    from engine.store.schema import messages

    tasks: list[object] = []
    real_work = source._Connection._work

    def watching_work(self):
        tasks.append(self)
        return real_work(self)

    monkeypatch.setattr(source._Connection, "_work", watching_work)

    async def scenario() -> list[str]:
        async with serving(tmp_path) as (server, db):
            client = MLLPClient("127.0.0.1", server.port, timeout=10)
            try:
                answers = [code(await client.send(MSG.replace(b"{n}", f"F{n}".encode()))) for n in range(10)]
                answers.append(code(await client.send(MSG.replace(b"{n}", b"F3"))))  # a resend: original ACK
            finally:
                await client.close()
            rows = db.read(lambda c: c.execute(
                select(messages.c.control_id, messages.c.status, messages.c.duplicate_count)
                .order_by(messages.c.id)).all())
            assert [tuple(r) for r in rows] == [(f"CF{n}", "PROCESSED", int(n == 3)) for n in range(10)]
            assert source._LOAD.frames == 0
            return answers

    run = pytest.importorskip("uvloop").run if loop_kind == "uvloop" else asyncio.run
    assert run(scenario()) == ["AA"] * 11
    assert tasks == []


def test_a_lone_frame_the_writer_cannot_take_at_once_goes_to_the_task_opened(tmp_path, monkeypatch):
    """With the writer busy, the frame opened for the lone-frame path is handed to the task, which
    does not open it again, and answers once the writer is free."""
    import threading

    opens: list[bytes] = []
    watch_open(monkeypatch, opens.append)

    async def scenario() -> str:
        async with serving(tmp_path) as (server, db):
            client = MLLPClient("127.0.0.1", server.port, timeout=10)
            try:
                gate = threading.Event()
                db.writer.submit(lambda conn: gate.wait(10))
                sent = asyncio.ensure_future(client.send(MSG.replace(b"{n}", b"B1")))
                await asyncio.sleep(0.3)
                assert not sent.done()
                gate.set()
                return code(await sent)
            finally:
                await client.close()

    assert asyncio.run(scenario()) == "AA"
    assert len(opens) == 1


def test_a_failure_answering_a_lone_frame_closes_only_that_connection(tmp_path, monkeypatch):
    """An unexpected exception while answering a lone frame is logged, that connection is aborted,
    the load count stays right and the listener serves the next connection."""
    import channels.mllp.source as source

    def fail_on_boom(payload: bytes) -> None:
        if b"|BOOM|" in payload:
            raise RuntimeError("bug")

    watch_open(monkeypatch, fail_on_boom)

    async def scenario() -> str:
        async with serving(tmp_path) as (server, _db):
            bad = MLLPClient("127.0.0.1", server.port, timeout=5)
            with pytest.raises((ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError)):
                await bad.send(MSG.replace(b"{n}", b"|BOOM|"))
            await bad.close()
            assert source._LOAD.frames == 0
            good = MLLPClient("127.0.0.1", server.port, timeout=5)
            try:
                return code(await good.send(MSG.replace(b"{n}", b"OK1")))
            finally:
                await good.close()

    assert asyncio.run(scenario()) == "AA"


def test_the_idle_timeout_counts_from_the_last_answer_and_never_cuts_work_short(tmp_path):
    """Messages more often than the timeout keep a connection open; a message whose commit takes
    longer than the timeout still gets its answer; then the connection closes a timeout later."""
    import threading
    import time

    async def scenario() -> tuple[list[str], float]:
        async with serving(tmp_path, idle_timeout_seconds=0.4) as (server, db):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

            async def send(n: str) -> str:
                writer.write(b"\x0b" + MSG.replace(b"{n}", n.encode()) + b"\x1c\r")
                return code((await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5))[1:-2])

            try:
                answers = []
                for n in range(6):  # 1.5 s in all, a message every 0.25 s
                    answers.append(await send(f"I{n}"))
                    await asyncio.sleep(0.25)
                gate = threading.Event()
                db.writer.submit(lambda conn: gate.wait(10))  # the next commit waits 1 s, more than the timeout
                threading.Timer(1.0, gate.set).start()
                answers.append(await send("SLOW"))
                answered = time.monotonic()
                assert await asyncio.wait_for(reader.read(), 5) == b""
                return answers, time.monotonic() - answered
            finally:
                writer.close()

    answers, closed_after = asyncio.run(scenario())
    assert answers == ["AA"] * 7
    assert 0.3 < closed_after < 1.5


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_frames_that_arrive_together_on_several_connections_share_the_writer_thread(tmp_path, loop_kind):
    """Frames read in the same loop iteration are counted before any is answered: none is committed
    alone in the loop (which would make the others wait for its fsync), they go to the writer thread
    together and share its commits."""
    import socket
    import threading
    import time

    async def scenario() -> tuple[list[str], int]:
        async with serving(tmp_path) as (server, db):
            socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(8)]
            try:
                await asyncio.sleep(0.2)  # every connection accepted
                sent = threading.Event()

                def send_all() -> None:
                    for n, sock in enumerate(socks):
                        send_frame(sock, f"T{n}")
                    sent.set()

                # The loop is held while all eight frames arrive, so it reads them in one iteration.
                loop = asyncio.get_running_loop()
                loop.call_soon(lambda: (threading.Thread(target=send_all).start(), sent.wait(5), time.sleep(0.1)))
                answers = []
                for sock in socks:
                    data = b""
                    while not data.endswith(b"\x1c\r"):
                        data += await asyncio.to_thread(sock.recv, 65536)
                    answers.append(code(data[1:-2]))
                return answers, db.writer.inline_commits
            finally:
                for sock in socks:
                    sock.close()

    run = pytest.importorskip("uvloop").run if loop_kind == "uvloop" else asyncio.run
    answers, inline = run(scenario())
    assert answers == ["AA"] * 8
    assert inline == 0


def test_a_frame_read_just_before_the_listener_stops_is_not_stored(tmp_path, monkeypatch):
    """stop() aborts every connection; a frame already read but not yet answered gets no answer and
    is not stored (the sender resends it), and the load count goes back to zero."""
    import socket

    from sqlalchemy import func, select

    import channels.mllp.source as source
    from engine.store.schema import messages

    real = source._Connection.data_received

    def read_then_aborted(self, data: bytes) -> None:
        real(self, data)
        self.abort()  # as MLLPServer.stop() would, before the loop runs the scheduled answer

    monkeypatch.setattr(source._Connection, "data_received", read_then_aborted)

    async def scenario() -> int:
        async with serving(tmp_path) as (server, db):
            sock = socket.create_connection(("127.0.0.1", server.port))
            try:
                send_frame(sock, "STOP1")
                await asyncio.sleep(0.5)
                assert source._LOAD.frames == 0
                return db.read(lambda c: c.execute(select(func.count()).select_from(messages)).scalar_one())
            finally:
                sock.close()

    assert asyncio.run(scenario()) == 0
